"""Where a decode step's time goes: onnxruntime's profiler over N KV-cache steps of one model, by op type.

python benchmarks/profile_decode.py MODEL.onnx [--steps 32] [--prompt 64]
Prints wall time per step, the kernels' share of it (the rest is per-node dispatch and the Python loop),
node count, and the op types that dominate. 1 thread, like run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")


def profile(model: Path, steps: int, prompt: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from edgekit.runtime import Decoder

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    dec = Decoder(sess)
    genai_cfg = model.parent / "genai_config.json"
    if genai_cfg.is_file():  # the builder's graph leaves the cache's head dim symbolic
        head = json.loads(genai_cfg.read_text())["model"]["decoder"]["head_size"]
        dec.past = [(n, [*s[:-1], head] if not isinstance(s[-1], int) else s, d) for n, s, d in dec.past]
    ids = list(range(100, 100 + prompt))
    dec.generate(ids, 4)  # warm-up outside the profile
    popts = ort.SessionOptions()
    popts.intra_op_num_threads = 1
    popts.inter_op_num_threads = 1
    popts.enable_profiling = True
    popts.profile_file_prefix = "/tmp/edgekit-profile"
    psess = ort.InferenceSession(str(model), popts, providers=["CPUExecutionProvider"])
    pdec = Decoder(psess)
    pdec.past = dec.past
    t0 = time.perf_counter()
    res = pdec.generate(ids, steps + 1)
    wall = time.perf_counter() - t0
    trace = Path(psess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    runs = [e for e in events if e.get("name") == "model_run"]
    by_op: dict[str, float] = defaultdict(float)
    nodes = 0
    decode_start = runs[1]["ts"] if len(runs) > 1 else 0  # run 0 is the prefill
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= decode_start:
            by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3
            nodes += 1
    n_steps = max(1, len(runs) - 1)
    kernel_ms = sum(by_op.values()) / n_steps
    model_run_ms = sum(r["dur"] for r in runs[1:]) / 1e3 / n_steps
    step_ms = float(np.median(res.step_s)) * 1e3
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    return {
        "model": str(model),
        "steps": n_steps,
        "wall_s": round(wall, 2),
        "step_ms_median": round(step_ms, 2),
        "model_run_ms": round(model_run_ms, 2),
        "kernel_ms": round(kernel_ms, 2),
        "nodes_per_step": nodes // n_steps,
        "outside_kernels_ms": round(model_run_ms - kernel_ms, 2),
        "python_loop_ms": round(step_ms - model_run_ms, 2),
        "top_ops_ms_per_step": {k: round(v / n_steps, 3) for k, v in top},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, nargs="+")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--prompt", type=int, default=64)
    args = p.parse_args()
    for m in args.model:
        print(json.dumps(profile(m, args.steps, args.prompt), indent=1))


if __name__ == "__main__":
    main()

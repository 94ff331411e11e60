"""The isolated measurement process: `python -m edgekit.bench.measure SPEC.json`, driven over stdin/stdout.

The ONNX engine imports only onnxruntime and numpy (through `edgekit.runtime`), so its peak RSS is what a
device pays; the result records whether torch was loaded to prove it. The torch engine measures the
PyTorch fp32 eager source with a manual KV-cache greedy loop that mirrors `runtime.Decoder.generate`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.bench.latency import PREFIX
from edgekit.util import peak_rss_mb

if TYPE_CHECKING:
    from onnxruntime import InferenceSession


def own_peak_rss_mb() -> float:
    """Peak RSS of this process image only. Linux carries ru_maxrss across fork+exec, so a child started
    by a 2 GB parent would report 2 GB; VmHWM belongs to the current address space and starts fresh."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def _onnx(spec: dict[str, Any]) -> tuple[Any, float, dict[str, Any]]:
    from edgekit.runtime import make_session

    t0 = time.perf_counter()
    session = make_session(Path(spec["model_file"]), threads=spec["threads"], providers=spec.get("providers"))
    load_s = time.perf_counter() - t0
    return session, load_s, {"provider": session.get_providers()[0]}


def _onnx_generate(session: InferenceSession) -> Any:
    from edgekit.runtime import Decoder

    decoder = Decoder(session)

    def gen(prompt: list[int], n: int) -> tuple[float, list[float]]:
        r = decoder.generate(prompt, n)
        return r.ttft_s, r.step_s

    return gen


def _onnx_encode(session: InferenceSession, task: str) -> Any:
    from edgekit.runtime import Encoder

    encoder = Encoder(session, task)
    return lambda ids, mask: encoder.run(ids, mask)


def _torch(spec: dict[str, Any]) -> tuple[Any, float, dict[str, Any]]:
    import torch

    torch.set_num_threads(spec["threads"])
    from edgekit.source import load_source

    t0 = time.perf_counter()
    model = load_source(spec["source"], task=spec["task"]).load_model()
    load_s = time.perf_counter() - t0
    return model, load_s, {"provider": "torch-cpu-eager", "torch": torch.__version__}


def _torch_generate(model: Any) -> Any:
    import torch

    def gen(prompt: list[int], n: int) -> tuple[float, list[float]]:
        steps: list[float] = []
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor([prompt], dtype=torch.long), use_cache=True)
            tok = int(out.logits[0, -1].argmax())
            ttft = time.perf_counter() - t0
            for _ in range(n - 1):
                ts = time.perf_counter()
                out = model(input_ids=torch.tensor([[tok]], dtype=torch.long), past_key_values=out.past_key_values,
                            use_cache=True)
                tok = int(out.logits[0, -1].argmax())
                steps.append(time.perf_counter() - ts)
        return ttft, steps

    return gen


def _torch_encode(model: Any) -> Any:
    import torch

    def run(ids: np.ndarray, mask: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))

    return run


def sampler(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Load the engine; return a function that makes one timed sample, and load facts."""
    onnx = spec["engine"] == "onnx"
    handle, load_s, info = _onnx(spec) if onnx else _torch(spec)
    info["load_ms"] = load_s * 1e3
    if spec["task"] == "text-generation":
        gen = _onnx_generate(handle) if onnx else _torch_generate(handle)
        prompt, n = list(spec["prompt"]), int(spec["new_tokens"])
        return (lambda: list(gen(prompt, n))), info
    encode = _onnx_encode(handle, spec["task"]) if onnx else _torch_encode(handle)
    ids = np.asarray(spec["batch_ids"], dtype=np.int64)
    mask = np.ones_like(ids)

    def once() -> float:
        t0 = time.perf_counter()
        encode(ids, mask)
        return time.perf_counter() - t0

    return once, info


def _reply(data: dict[str, Any]) -> None:
    # Prefixed lines: a library that prints to stdout cannot be mistaken for a reply.
    sys.stdout.write(PREFIX + json.dumps(data) + "\n")
    sys.stdout.flush()


def serve(spec: dict[str, Any]) -> None:
    """Answer 'run' (one sample) and 'exit' (peak RSS, then quit) on stdin; the parent interleaves engines."""
    once, info = sampler(spec)
    _reply({"ready": True, **info})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            _reply({"sample": once()})
        elif cmd == "exit":
            _reply({"peak_rss_mb": own_peak_rss_mb(), "torch_imported": "torch" in sys.modules})
            return


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    serve(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":
    main()

"""Numbers derived from the models and the host: bytes read per decode step, the roofline, the machine."""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# Ops whose weight input is read one row per token, not whole, during decode.
_GATHERS = {"Gather", "GatherBlockQuantized"}
# Ops that pass a weight through to its real consumer.
_PASS = {"DequantizeLinear", "Cast", "Reshape", "Transpose"}


def weight_bytes_per_token(model_file: Path) -> dict[str, float]:
    """Bytes of initializers a decode step reads: everything but tables that are only gathered from.

    Sizes come from the graph's dims and dtypes (external data is not loaded). A tied embedding that also
    feeds the LM head's MatMul counts in full, as it is read whole for the logits.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(model_file), load_external_data=False)
    consumers: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append((node.op_type, list(node.output)))

    def only_gathered(name: str, depth: int = 0) -> bool:
        uses = consumers.get(name, [])
        if not uses or depth > 3:
            return False
        for op, outs in uses:
            if op in _GATHERS:
                continue
            if op in _PASS and all(only_gathered(o, depth + 1) for o in outs):
                continue
            return False
        return True

    total = gathered = 0.0
    for init in model.graph.initializer:
        size = math.prod(init.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        if only_gathered(init.name):
            gathered += size
        else:
            total += size
    return {"weight_bytes": total, "gathered_bytes": gathered}


def kv_bytes_per_position(config: dict[str, Any], dtype_bytes: int = 4) -> int:
    from edgekit.bench.roofline import kv_bytes_per_position as kv

    return kv(config, dtype_bytes)


def roofline_tps(weight_bytes: float, kv_per_pos: int, mean_past: float, bandwidth_gbps: float) -> float:
    """Upper bound on decode tokens/s: each step streams the weights and the KV cache once."""
    return bandwidth_gbps * 1e9 / (weight_bytes + kv_per_pos * mean_past)


def measure_bandwidth() -> dict[str, Any]:
    """1-thread read bandwidth, measured now in a fresh process (torch sum of 512 MiB, best of 5)."""
    import json
    import sys

    code = (
        "import json, torch; torch.set_num_threads(1); from edgekit.bench.roofline import measure_host; "
        "print(json.dumps(measure_host(1)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine(genai_python: Path | None) -> dict[str, Any]:
    from edgekit.bench.hostinfo import host_info

    info = host_info()
    versions: dict[str, str | None] = {}
    for pkg in (
        "edgekit",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    if genai_python is not None and genai_python.is_file():
        out = subprocess.run(
            [str(genai_python), "-c", "import onnxruntime_genai as g; print(g.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        versions["onnxruntime-genai"] = out.stdout.strip() or None
    info["versions"] = versions
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def cosine(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = other / np.linalg.norm(other, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "n": len(cos)}


def ratio_ci(
    num: list[float],
    num_rounds: list[int],
    den: list[float],
    den_rounds: list[int],
    *,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int] | None:
    """median(num) / median(den) with a 95 % percentile bootstrap interval that resamples whole rounds.

    Both sides ran in the same rounds, so a round drawn twice brings both sides' samples twice: noise that hit a
    whole round (another user's job) moves numerator and denominator together, as it did in the run.
    """
    rounds = sorted(set(num_rounds) & set(den_rounds))
    if not rounds or not num or not den:
        return None
    n, nr = np.asarray(num, float), np.asarray(num_rounds)
    d, dr = np.asarray(den, float), np.asarray(den_rounds)
    by_n = {r: n[nr == r] for r in rounds}
    by_d = {r: d[dr == r] for r in rounds}
    value = float(np.median(n) / np.median(d))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        pick = rng.choice(rounds, len(rounds))
        draws.append(
            np.median(np.concatenate([by_n[r] for r in pick]))
            / np.median(np.concatenate([by_d[r] for r in pick]))
        )
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "value": value,
        "ci95_low": float(min(low, value)),
        "ci95_high": float(max(high, value)),
        "rounds": len(rounds),
    }

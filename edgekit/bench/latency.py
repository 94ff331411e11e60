"""Repeated timing runs, percentile summaries, and running a measurement in an isolated subprocess.

Each engine (ONNX variant, PyTorch source) is measured in its own fresh process (`edgekit.bench.measure`),
so its peak RSS is its own and one runtime's thread pool never competes with the other's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgekit.errors import BenchError

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_RUNS = 10  # a p95 from fewer runs is one outlier away from anything
MAX_RUNS = 500
STABLE_TOL = 0.02  # p95 moved less than 2 % ...
STABLE_PATIENCE = 3  # ... for this many consecutive runs


def repeat(run_once: Callable[[], T], key: Callable[[T], float], *, max_time_s: float, warmup: int = 1,
           min_runs: int = MIN_RUNS, max_runs: int = MAX_RUNS) -> tuple[list[T], str]:
    """Warm up, then run until the p95 of `key` is stable, the time limit passes, or `max_runs`.

    Returns the measured results and why it stopped ("stable", "time", "max_runs"). At least one
    measured run always happens, even when the warm-up alone used up the time.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        run_once()
    results: list[T] = []
    values: list[float] = []
    prev_p95: float | None = None
    calm = 0
    while True:
        results.append(run_once())
        values.append(key(results[-1]))
        p95 = float(np.percentile(values, 95))
        if prev_p95 is not None and p95 > 0 and abs(p95 - prev_p95) / p95 <= STABLE_TOL:
            calm += 1
        else:
            calm = 0
        prev_p95 = p95
        if len(results) >= min_runs and calm >= STABLE_PATIENCE:
            return results, "stable"
        if time.perf_counter() - start >= max_time_s:
            return results, "time"
        if len(results) >= max_runs:
            return results, "max_runs"


def summary(samples: list[float], unit: str, *, digits: int = 4) -> dict[str, Any]:
    """{value (= p50), unit, p50, p95, p99, min, max, n, estimated: false}."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        raise BenchError("no timing samples were recorded")
    p50, p95, p99 = (round(float(v), digits) for v in np.percentile(arr, [50, 95, 99]))
    return {"value": p50, "unit": unit, "p50": p50, "p95": p95, "p99": p99, "min": round(float(arr.min()), digits),
            "max": round(float(arr.max()), digits), "n": int(arr.size), "estimated": False}


def single(value: float, unit: str, *, digits: int = 3) -> dict[str, Any]:
    """A metric measured once (size, load time, peak RSS)."""
    return {"value": round(float(value), digits), "unit": unit, "n": 1, "estimated": False}


def generation_metrics(prompt_len: int, ttft_s: list[float], steps_s: list[list[float]]) -> dict[str, Any]:
    """Metrics from repeated generation runs: one TTFT and one list of decode-step times per run."""
    out: dict[str, Any] = {
        "ttft_ms": summary([t * 1e3 for t in ttft_s], "ms"),
        "prefill_tokens_per_s": summary([prompt_len / t for t in ttft_s], "tokens/s", digits=2),
    }
    per_run = [len(s) / sum(s) for s in steps_s if s and sum(s) > 0]
    if per_run:
        pooled = [x * 1e3 for s in steps_s for x in s]
        out["decode_tokens_per_s"] = summary(per_run, "tokens/s", digits=2)
        out["per_token_ms"] = summary(pooled, "ms")
        out["per_token_ms"]["samples"] = [round(x, 3) for x in pooled[:2000]]  # for the latency plot
    return out


def encoder_metrics(batch: int, latencies_s: list[float]) -> dict[str, Any]:
    out = {
        "latency_ms": summary([t * 1e3 for t in latencies_s], "ms"),
        "throughput_items_per_s": summary([batch / t for t in latencies_s], "items/s", digits=2),
    }
    out["latency_ms"]["samples"] = [round(t * 1e3, 3) for t in latencies_s[:2000]]
    return out


def run_isolated(spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Run `edgekit.bench.measure` on `spec` in a fresh interpreter; return its JSON result."""
    threads = str(spec.get("threads", 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "edgekit.bench.measure", str(spec_file), str(out_file)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{spec['engine']} measurement did not finish within {timeout_s:.0f} s",
                             hint="lower --max-time or the profile's new_tokens") from exc
        if proc.returncode != 0 or not out_file.is_file():
            tail = " ".join((proc.stderr or "").strip().splitlines()[-1:])[:300]
            raise BenchError(f"{spec['engine']} measurement failed (exit {proc.returncode}): {tail}")
        result: dict[str, Any] = json.loads(out_file.read_text())
        return result

"""Repeated timing runs, percentile summaries, and running a measurement in an isolated subprocess.

Each engine (ONNX variant, PyTorch source) is measured in its own fresh process (`edgekit.bench.measure`),
so its peak RSS is its own and one runtime's thread pool never competes with the other's; the parent
interleaves their runs so that a noisy host slows both alike.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BenchError

log = logging.getLogger(__name__)
PREFIX = "@edgekit-bench "

MIN_RUNS = 10  # a p95 from fewer runs is one outlier away from anything
MAX_RUNS = 500
STABLE_TOL = 0.02  # p95 moved less than 2 % ...
STABLE_PATIENCE = 3  # ... for this many consecutive runs


class Stability:
    """Tracks one engine's samples; stable once its p95 moved less than STABLE_TOL for STABLE_PATIENCE runs."""

    def __init__(self, min_runs: int = MIN_RUNS) -> None:
        self.values: list[float] = []
        self.min_runs = min_runs
        self.calm = 0

    def add(self, value: float) -> None:
        prev = float(np.percentile(self.values, 95)) if self.values else None
        self.values.append(value)
        p95 = float(np.percentile(self.values, 95))
        moved = prev is None or p95 <= 0 or abs(p95 - prev) / p95 > STABLE_TOL
        self.calm = 0 if moved else self.calm + 1

    @property
    def stable(self) -> bool:
        return len(self.values) >= self.min_runs and self.calm >= STABLE_PATIENCE


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


class Worker:
    """One engine in its own interpreter (`edgekit.bench.measure`), asked for one sample at a time."""

    def __init__(self, spec: dict[str, Any], folder: Path, timeout_s: float) -> None:
        self.engine = str(spec["engine"])
        self.timeout_s = timeout_s
        threads = str(spec.get("threads", 1))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
               "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
        spec_file = folder / f"{self.engine}.json"
        spec_file.write_text(json.dumps(spec))
        self.stderr = (folder / f"{self.engine}.log").open("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit.bench.measure", str(spec_file)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise BenchError(f"{self.engine} measurement did not answer within {self.timeout_s:.0f} s",
                                 hint="lower --max-time or the profile's new_tokens")
            line = self.proc.stdout.readline()
            if not line:
                self.stderr.seek(0)
                tail = " ".join(self.stderr.read().strip().splitlines()[-1:])[:300]
                raise BenchError(f"{self.engine} measurement failed (exit {self.proc.wait()}): {tail}")
            if line.startswith(PREFIX):
                reply: dict[str, Any] = json.loads(line[len(PREFIX):])
                return reply

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def measure_pair(specs: dict[str, dict[str, Any]], key: Callable[[Any], float], *, max_time_s: float,
                 warmup: int = 1, on_round: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run each engine in its own process and interleave their runs (A, B, A, B, ...).

    Interleaving pairs the engines in time, so background load on a shared host slows both alike and the
    speedup ratio stays meaningful. Only one process computes at a time. Stops when every engine's p95 is
    stable, after `max_time_s` per engine (so 2 × for two), or at MAX_RUNS.
    Returns per engine: samples, load facts, peak RSS, and why it stopped.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        workers: dict[str, Worker] = {}
        try:
            for name, spec in specs.items():  # loaded one after the other: loads do not compete either
                workers[name] = Worker(spec, Path(tmp), timeout_s=max_time_s * 4 + 600)
            for _ in range(warmup):
                for w in workers.values():
                    w.ask("run")
            tracks = {name: Stability() for name in workers}
            samples: dict[str, list[Any]] = {name: [] for name in workers}
            start, stop, rounds = time.perf_counter(), "max_runs", 0
            while rounds < MAX_RUNS:
                for name, w in workers.items():
                    samples[name].append(w.ask("run")["sample"])
                    tracks[name].add(key(samples[name][-1]))
                rounds += 1
                if on_round is not None:
                    on_round(rounds)
                if all(t.stable for t in tracks.values()):
                    stop = "stable"
                    break
                if time.perf_counter() - start >= max_time_s * len(workers):
                    stop = "time"
                    break
            return {name: {**w.info, **w.ask("exit"), "samples": samples[name], "runs": rounds, "stopped": stop}
                    for name, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()

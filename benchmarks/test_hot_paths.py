"""pytest-benchmark suites for edgekit's own hot paths, so regressions show up as numbers.

Run: .venv/bin/pytest benchmarks/test_hot_paths.py --benchmark-only -p no:cacheprovider
(not collected by `make test`: its testpaths is tests/). Compare runs with --benchmark-autosave /
--benchmark-compare. Each benchmark also checks its result, so a fast wrong answer fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest.importorskip("pytest_benchmark")

VOCAB = 8192
POSITIONS = 2048  # a long eval stream: 8 windows of 256
BUNDLE_MB = 200


# ------------------------------------------------------------------ fidelity maths


@pytest.fixture(scope="module")
def logits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src = rng.standard_normal((POSITIONS, VOCAB), dtype=np.float32) * 3
    var = src + rng.standard_normal((POSITIONS, VOCAB), dtype=np.float32) * 0.3
    nxt = rng.integers(0, VOCAB, POSITIONS)
    return src, var, nxt


def test_causal_stats_long_stream(benchmark: Any, logits: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from edgekit.bench.fidelity import causal_stats

    src, var, nxt = logits
    st = benchmark(causal_stats, src, var, nxt)
    assert len(st.kld) == POSITIONS and (st.kld >= 0).all()
    assert 0.5 < st.top1.mean() < 1.0  # noise of 0.1 × the logit scale flips some, not most


def test_summarize_causal_bootstrap(
    benchmark: Any, logits: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """Seven metrics × 1000 bootstrap resamples over every position: the slow part of a bench report."""
    from edgekit.bench.fidelity import CausalStats, causal_stats, summarize_causal

    src, var, nxt = logits
    st = causal_stats(src, var, nxt)
    long = CausalStats.concat([st] * 4)  # 8192 positions
    out = benchmark.pedantic(summarize_causal, args=(long,), rounds=3, iterations=1)
    top1 = out["top1_agreement"]
    assert top1["ci95_low"] <= top1["value"] <= top1["ci95_high"] and top1["n"] == 4 * POSITIONS


def test_summarize_embeddings(benchmark: Any) -> None:
    from edgekit.bench.fidelity import summarize_embeddings

    rng = np.random.default_rng(1)
    a = rng.standard_normal((4096, 384))
    b = a + rng.standard_normal((4096, 384)) * 0.05
    out = benchmark(summarize_embeddings, a, b)
    assert 0.99 < out["cosine_mean"]["value"] < 1.0


# ------------------------------------------------------------------ bundle manifest hashing


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle-src")
    rng = np.random.default_rng(2)
    with (folder / "model.onnx.data").open("wb") as fh:
        for _ in range(BUNDLE_MB):
            fh.write(rng.bytes(1 << 20))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def test_bundle_write_manifest(benchmark: Any, big_folder: Path, tmp_path: Path) -> None:
    """Copy a ~200 MB weight file into a bundle, hash it into the manifest, commit atomically."""
    from edgekit.bundle import BundleWriter

    counter = iter(range(10_000))

    def write() -> dict[str, Any]:
        with BundleWriter(tmp_path / f"b{next(counter)}") as w:
            for p in sorted(big_folder.iterdir()):
                w.add_file(p)
            manifest = w.write_manifest({"task": "text-generation"})
            w.commit()
        return manifest

    manifest = benchmark.pedantic(write, rounds=3, iterations=1)
    assert manifest["files"]["model.onnx.data"]["bytes"] == BUNDLE_MB << 20


def test_bundle_verify_hashes(benchmark: Any, big_folder: Path, tmp_path: Path) -> None:
    """The integrity half of `edgekit verify`: re-hash every file against the manifest."""
    from edgekit.bundle import BundleWriter, check_files, read_manifest
    from edgekit.errors import VerifyFailed

    with BundleWriter(tmp_path / "bundle") as w:
        for p in sorted(big_folder.iterdir()):
            w.add_file(p)
        w.write_manifest({"task": "text-generation"})
        out = w.commit()
    manifest = read_manifest(out)
    benchmark.pedantic(check_files, args=(out, manifest), rounds=3, iterations=1)
    with (out / "config.json").open("a") as fh:
        fh.write(" ")
    with pytest.raises(VerifyFailed):
        check_files(out, manifest)


# ------------------------------------------------------------------ report rendering


def _metric(value: float, unit: str, samples: list[float] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "value": value,
        "unit": unit,
        "p50": value,
        "p95": value * 1.1,
        "p99": value * 1.2,
        "min": value * 0.9,
        "max": value * 1.3,
        "n": len(samples or [1]),
        "estimated": False,
    }
    if samples is not None:
        m["samples"] = samples
    return m


def _ci(value: float) -> dict[str, Any]:
    return {
        "value": value,
        "ci95_low": value * 0.98,
        "ci95_high": min(1.0, value * 1.02) if value <= 1 else value * 1.02,
        "n": 2048,
    }


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """A report shaped like edgekit.bench's for SmolLM2 (2000 per-token samples, as bench keeps)."""
    rng = np.random.default_rng(3)
    samples = [round(float(x), 3) for x in rng.gamma(20, 0.5, 2000)]
    perf = {
        "decode_tokens_per_s": _metric(95.0, "tokens/s"),
        "ttft_ms": _metric(120.0, "ms"),
        "prefill_tokens_per_s": _metric(520.0, "tokens/s"),
        "per_token_ms": _metric(10.5, "ms", samples),
        "peak_rss_mb": _metric(310.0, "MB"),
        "model_size_mb": _metric(150.0, "MB"),
        "load_ms": _metric(400.0, "ms"),
    }
    source_perf = {k: {**v, "value": v["value"] * 0.2} for k, v in perf.items()}
    device = {
        "decode_tokens_per_s": {"value": 30.0, "unit": "tokens/s", "estimated": True, "basis": "roofline"},
        "ttft_ms": {"value": 400.0, "unit": "ms", "p95": 440.0, "estimated": True, "basis": "roofline"},
    }
    return {
        "schema": "edgekit/report@1",
        "edgekit_version": "0.1.0",
        "created": "2026-11-28T20:00:00Z",
        "gate": None,
        "host": {
            "cpu_model": "AMD EPYC",
            "cores": 2,
            "isa_flags": ["avx2", "fma"],
            "onnxruntime_version": "1.32.0",
            "providers": ["CPUExecutionProvider"],
        },
        "variant": {
            "path": "/tmp/v",
            "method": "int4-hqq",
            "target": "x86-avx2",
            "size_mb": 150.0,
            "provider": "CPUExecutionProvider",
            "task": "text-generation",
        },
        "source": {
            "spec": "example:smollm2-135m",
            "path": "/tmp/s",
            "architecture": "LlamaForCausalLM",
            "parameters": 134515008,
            "sha256": "0" * 64,
            "size_mb": 538.0,
        },
        "profile": {"name": "raspberry-pi-5", "workload": {"prompt_tokens": 64, "new_tokens": 64}},
        "performance": {
            "variant": perf,
            "source": source_perf,
            "speedup": {"decode_tokens_per_s": 5.0},
            "device": device,
            "runs": {who: {"runs": 20, "stopped": "stable", "threads": 1} for who in ("variant", "source")},
        },
        "fidelity": {
            "top1_agreement": _ci(0.97),
            "kld_mean": _ci(0.004),
            "kld_p99": _ci(0.05),
            "kld_max": _ci(0.4),
            "ppl_source": _ci(39.7),
            "ppl_variant": _ci(40.1),
            "ppl_ratio": _ci(1.01),
        },
        "warnings": [],
    }


def test_report_markdown(benchmark: Any, report: dict[str, Any]) -> None:
    from edgekit.bench.report import to_markdown

    md = benchmark(to_markdown, report, png_name="report.png")
    assert "int4-hqq" in md and "top1_agreement" in md


def test_report_png(benchmark: Any, report: dict[str, Any]) -> None:
    from edgekit.bench.report import render_png

    png = benchmark.pedantic(render_png, args=(report,), rounds=5, iterations=1, warmup_rounds=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_markdown(benchmark: Any, report: dict[str, Any]) -> None:
    from edgekit.catalog import load_profile
    from edgekit.gate import gate

    profile = load_profile("raspberry-pi-5")

    def run() -> str:
        return str(gate(report, profile).markdown())

    md = benchmark(run)
    assert "top1_agreement" in md or "fidelity" in md

"""bench() end to end on the tiny fixtures: report structure, estimates, rendering, the CLI. Never timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgekit.bench import bench, write_report
from edgekit.catalog import load_profile
from edgekit.source import load_source
from tests.conftest import run_cli

METRIC_KEYS = {"value", "unit", "p50", "p95", "p99", "min", "max", "n", "estimated"}
GEN_METRICS = {"decode_tokens_per_s", "ttft_ms", "prefill_tokens_per_s", "per_token_ms", "peak_rss_mb", "model_size_mb", "load_ms"}
ENC_METRICS = {"latency_ms", "throughput_items_per_s", "peak_rss_mb", "model_size_mb", "load_ms"}
CAUSAL_FIDELITY = {"top1_agreement", "kld_mean", "kld_p99", "kld_max", "ppl_source", "ppl_variant", "ppl_ratio"}


@pytest.fixture(scope="module")
def llama_report(tiny_onnx, tiny_model) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return bench(tiny_onnx("llama"), load_source(str(tiny_model("llama"))), load_profile("local"),
                 eval_tokens=64, max_time_s=0.3)


def _check_measured(metrics: dict[str, Any], names: set[str]) -> None:
    assert set(metrics) == names
    for name, m in metrics.items():
        assert m["estimated"] is False and m["value"] > 0 and m["unit"], name
        if m["n"] > 1:
            assert set(m) >= METRIC_KEYS and m["min"] <= m["p50"] <= m["p95"] <= m["p99"] <= m["max"], name


def test_generation_report_structure(llama_report: dict[str, Any], tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    r = llama_report
    assert r["schema"] == "edgekit/report@1" and r["edgekit_version"] and r["created"] and r["gate"] is None
    assert {"cpu_model", "cores", "isa_flags", "onnxruntime_version", "providers"} <= set(r["host"])
    assert {"path", "sha256", "architecture", "parameters"} <= set(r["source"]) and len(r["source"]["sha256"]) == 64
    v = r["variant"]
    assert v["method"] == "fp32" and v["target"] == "x86-avx2" and v["provider"] == "CPUExecutionProvider"
    assert v["files"][0]["name"] == "model.onnx" and v["size_mb"] == pytest.approx(tiny_onnx("llama").size_mb, rel=1e-3)
    assert r["profile"]["name"] == "local" and r["profile"]["workload"]["new_tokens"] == 32
    perf = r["performance"]
    _check_measured(perf["variant"], GEN_METRICS)
    _check_measured(perf["source"], GEN_METRICS)
    assert perf["device"] is None  # the local profile is the host: measured, never estimated
    # 32 new tokens: the first comes from the prefill, 31 decode steps per run.
    assert perf["variant"]["per_token_ms"]["n"] == 31 * perf["runs"]["variant"]["runs"]
    assert set(perf["speedup"]) == GEN_METRICS and all(x > 0 for x in perf["speedup"].values())
    assert set(r["fidelity"]) == CAUSAL_FIDELITY
    for m in r["fidelity"].values():
        assert set(m) == {"value", "ci95_low", "ci95_high", "n", "n_windows", "n_documents"}
        assert m["ci95_low"] <= m["value"] <= m["ci95_high"]
    # 64 tokens → 4 windows of 16 from 4 documents, 15 predictions each.
    top1 = r["fidelity"]["top1_agreement"]
    assert top1["value"] == 1.0 and top1["n"] == 60 and top1["n_windows"] == 4 and top1["n_documents"] == 4
    decode = r["decode"]
    assert decode["prompts"] == 8 and decode["metrics"]["kld_mean"]["value"] < 1e-6
    assert decode["metrics"]["match_fraction"]["value"] == 1.0 and decode["metrics"]["match_fraction"]["n_windows"] == 8
    # The ONNX measurement process never loaded torch, so its RSS is the device's.
    assert not any("torch was loaded" in w for w in r["warnings"])
    json.dumps(r, allow_nan=False)


def test_write_report_renders_json_markdown_png(llama_report: dict[str, Any], tmp_path: Path) -> None:
    paths = write_report(llama_report, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(llama_report))
    md = paths["md"].read_text()
    assert "| decode_tokens_per_s (tokens/s) |" in md and "| kld_mean | " in md and "interleaved" in md and "report.png" in md
    assert "## Decode path (8 prompts" in md and "| match_fraction | 1 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md", "report.png"]


def test_encoder_on_a_device_profile_is_estimated(tiny_onnx, tiny_model) -> None:  # type: ignore[no-untyped-def]
    r = bench(tiny_onnx("bert-emb"), load_source(str(tiny_model("bert-emb"))), load_profile("raspberry-pi-5"),
              eval_tokens=64, max_time_s=0.3)
    perf = r["performance"]
    _check_measured(perf["variant"], ENC_METRICS)
    assert set(perf["device"]) == {"latency_ms", "throughput_items_per_s"}
    for m in perf["device"].values():
        assert m["estimated"] is True and m["basis"] == "roofline" and m["value"] > 0
    # A slower device means a longer latency and a proportionally lower throughput.
    lat, thr = perf["device"]["latency_ms"], perf["device"]["throughput_items_per_s"]
    assert lat["scale"] * thr["scale"] == pytest.approx(1.0, rel=1e-3)
    assert perf["roofline"]["host"]["memory_bandwidth_gbps"] > 0 and perf["roofline"]["batch_flops"] > 0
    assert set(r["fidelity"]) == {"cosine_mean", "cosine_p5"} and r["fidelity"]["cosine_mean"]["value"] > 0.9999
    assert r["decode"] is None
    r2 = bench(tiny_onnx("bert-emb"), load_source(str(tiny_model("bert-emb"))), load_profile("raspberry-pi-5"),
               eval_tokens=64, max_time_s=0.3, on_device=True)
    assert r2["performance"]["device"] is None and r2["performance"]["on_device"] is True
    assert r2["fidelity"] == r["fidelity"]  # deterministic across runs


def test_task_mismatch_is_a_bench_error(tiny_onnx, tiny_model) -> None:  # type: ignore[no-untyped-def]
    from edgekit.errors import BenchError

    with pytest.raises(BenchError, match="wrong --source"):
        bench(tiny_onnx("bert-emb"), load_source(str(tiny_model("llama"))), load_profile("local"), max_time_s=0.1)


def test_cli_bench_json_and_files(tiny_onnx, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r" / "llama.json"
    proc = run_cli("bench", str(tiny_onnx("llama").path), "--source", str(tiny_model("llama")), "--max-time", "0.2",
                   "--eval-tokens", "32", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "edgekit/report@1" and json.loads(out.read_text()) == report
    assert (out.parent / "llama.md").is_file() and (out.parent / "llama.png").is_file()
    bad = run_cli("bench", str(tmp_path / "nothing"), "--source", str(tiny_model("llama")))
    assert bad.returncode == 2 and "no model.onnx" in bad.stderr and bad.stdout == ""


def test_a_failing_measurement_process_is_a_bench_error(tmp_path: Path) -> None:
    from edgekit.bench.latency import measure_pair
    from edgekit.errors import BenchError

    spec = {"engine": "onnx", "task": "text-generation", "threads": 1, "model_file": str(tmp_path / "missing.onnx"),
            "prompt": [1, 2], "new_tokens": 2}
    with pytest.raises(BenchError, match="onnx measurement failed"):
        measure_pair({"variant": spec}, lambda r: r[0], max_time_s=0.1)


def test_stability_needs_min_runs_and_a_calm_p95() -> None:
    from edgekit.bench.latency import Stability

    track = Stability(min_runs=4)
    for v in (1.0, 1.0, 1.0):
        track.add(v)
    assert not track.stable  # calm, but too few runs
    track.add(1.0)
    assert track.stable
    track.add(5.0)  # an outlier moves the p95
    assert not track.stable


def test_missing_provider_falls_back_to_cpu_with_a_warning(tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    from edgekit.artifact import OnnxArtifact
    from edgekit.bench.core import _providers

    art = tiny_onnx("llama")
    on_cuda = OnnxArtifact(art.path, art.task, {**art.meta, "target": "cuda"})
    warnings: list[str] = []
    assert _providers(on_cuda, load_profile("local"), ["CPUExecutionProvider"], warnings) == ["CPUExecutionProvider"]
    assert warnings and "CUDAExecutionProvider not available" in warnings[0]


def test_human_summary_lists_both_engines(llama_report: dict[str, Any]) -> None:
    from edgekit.cli.bench_cmd import summary_table

    text = summary_table(llama_report)
    assert "decode_tokens_per_s (tokens/s)" in text and "kld_mean" in text and "speedup" in text

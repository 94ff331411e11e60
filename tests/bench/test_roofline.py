"""Roofline estimate maths: memory-bound decode scales with bandwidth, compute-bound prefill with peak FLOPs."""

from __future__ import annotations

from typing import Any

import pytest

from edgekit.bench.roofline import estimate_device, kv_bytes_per_position, roof_time, work
from edgekit.catalog import load_profile

LLAMA_CFG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


def _measured() -> dict[str, dict[str, Any]]:
    return {name: {"value": v, "unit": u, "p50": v, "p95": v * 1.1}
            for name, v, u in (("decode_tokens_per_s", 60.0, "tokens/s"), ("per_token_ms", 16.0, "ms"),
                               ("ttft_ms", 150.0, "ms"), ("prefill_tokens_per_s", 400.0, "tokens/s"))}


def test_kv_bytes_and_work() -> None:
    assert kv_bytes_per_position(LLAMA_CFG) == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 46 KB per position
    profile = load_profile("raspberry-pi-5")
    units = work("text-generation", 265e6, 135e6, LLAMA_CFG, profile.workload)
    assert units["decode"][1] == 2 * 135e6 and units["prefill"][1] == 2 * 135e6 * profile.workload.prompt_tokens
    assert units["decode"][0] > 265e6  # weights plus the KV cache read


def test_device_estimate_scales_by_roofline_ratio() -> None:
    profile = load_profile("raspberry-pi-5")
    dev = profile.device
    assert dev.memory_bandwidth_gbps and dev.peak_gflops_fp32
    host = {"memory_bandwidth_gbps": 2 * dev.memory_bandwidth_gbps, "peak_gflops_fp32": dev.peak_gflops_fp32}
    out = estimate_device(_measured(), "text-generation", "int8-weight", 265e6, 135e6, LLAMA_CFG, profile, host)
    # Decode is memory-bound on both: half the bandwidth → half the tokens/s, twice the per-token time.
    assert out["decode_tokens_per_s"]["value"] == pytest.approx(30.0, rel=1e-3)
    assert out["per_token_ms"]["value"] == pytest.approx(32.0, rel=1e-3)
    assert out["per_token_ms"]["p95"] == pytest.approx(2 * 16.0 * 1.1, rel=1e-3)
    # Prefill of 64 tokens is compute-bound and the peaks are equal: unchanged.
    assert out["ttft_ms"]["value"] == pytest.approx(150.0, rel=1e-3)
    assert all(m["estimated"] is True and m["basis"] == "roofline" for m in out.values())
    assert roof_time(1e9, 1e9, 10, 1000) == pytest.approx(0.1)


def test_estimate_never_beats_the_device_roofline() -> None:
    """A host that beat its cached (too low) bandwidth figure must not push the device past its own roofline."""
    profile = load_profile("raspberry-pi-5")
    dev = profile.device
    host = {"memory_bandwidth_gbps": 0.5 * dev.memory_bandwidth_gbps, "peak_gflops_fp32": dev.peak_gflops_fp32}
    out = estimate_device(_measured(), "text-generation", "int8-weight", 265e6, 135e6, LLAMA_CFG, profile, host)
    nbytes, flops = work("text-generation", 265e6, 135e6, LLAMA_CFG, profile.workload)["decode"]
    ceiling = 1 / roof_time(nbytes, flops, dev.memory_bandwidth_gbps, dev.peak_gflops_fp32)
    assert ceiling < 60.0 * 2  # unclamped, the estimate would be twice the host's 60 tok/s
    assert out["decode_tokens_per_s"]["value"] == pytest.approx(ceiling, rel=1e-3)
    assert out["decode_tokens_per_s"]["capped_at_device_roofline"] is True
    assert out["per_token_ms"]["value"] == pytest.approx(1e3 / ceiling, rel=1e-3)
    assert "capped_at_device_roofline" not in out["ttft_ms"]  # compute-bound prefill is not affected


def test_stale_host_figures_are_measured_again(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from edgekit.bench.roofline import host_roofline

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    stale = {"memory_bandwidth_gbps": 0.001, "peak_gflops_fp32": 0.001, "threads": 1}
    (tmp_path / "host_roofline.json").write_text(json.dumps({"cpu|threads=1": stale}))
    assert host_roofline("cpu", 1)["memory_bandwidth_gbps"] == 0.001  # cached figures are reused...
    fresh = host_roofline("cpu", 1, refresh=True)  # ...until a measurement beats them
    assert fresh["memory_bandwidth_gbps"] > 0.1 and fresh["peak_gflops_fp32"] > 0.1
    assert json.loads((tmp_path / "host_roofline.json").read_text())["cpu|threads=1"] == fresh

"""Roofline estimate maths: memory-bound decode scales with bandwidth, compute-bound prefill with peak FLOPs."""

from __future__ import annotations

from typing import Any

import pytest

from edgekit.bench.roofline import device_roofs, estimate_device, kv_bytes_per_position, roof_time, work
from edgekit.catalog import load_profile
from edgekit.specs import Profile

LLAMA_CFG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


def _measured() -> dict[str, dict[str, Any]]:
    return {name: {"value": v, "unit": u, "p50": v, "p95": v * 1.1}
            for name, v, u in (("decode_tokens_per_s", 60.0, "tokens/s"), ("per_token_ms", 16.0, "ms"),
                               ("ttft_ms", 150.0, "ms"), ("prefill_tokens_per_s", 400.0, "tokens/s"))}


def _with_device(name: str, **device: Any) -> Profile:
    """A shipped profile with device fields replaced (validated like a YAML file would be)."""
    data = load_profile(name).model_dump(by_alias=True)
    data["device"].update(device)
    return Profile.model_validate(data)


EXACT = {"value": 1.0, "low": 1.0, "high": 1.0}  # a device that reaches its datasheet figures


def test_kv_bytes_and_work() -> None:
    assert kv_bytes_per_position(LLAMA_CFG) == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 46 KB per position
    profile = load_profile("raspberry-pi-5")
    units = work("text-generation", 265e6, 135e6, LLAMA_CFG, profile.workload)
    assert units["decode"][1] == 2 * 135e6 and units["prefill"][1] == 2 * 135e6 * profile.workload.prompt_tokens
    assert units["decode"][0] > 265e6  # weights plus the KV cache read


def test_device_estimate_scales_by_roofline_ratio() -> None:
    profile = _with_device("raspberry-pi-5", bandwidth_efficiency=EXACT, compute_efficiency=EXACT)
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
    assert out["decode_tokens_per_s"]["range"]["value"] == pytest.approx([30.0, 30.0], rel=1e-3)  # no spread
    assert roof_time(1e9, 1e9, 10, 1000) == pytest.approx(0.1)


def test_device_is_derated_by_its_efficiency_and_the_band_becomes_the_range() -> None:
    eff = {"value": 0.5, "low": 0.4, "high": 0.6}
    profile = _with_device("raspberry-pi-5", bandwidth_efficiency=eff, compute_efficiency=eff)
    dev = profile.device
    assert dev.memory_bandwidth_gbps and dev.peak_gflops_fp32
    host = {"memory_bandwidth_gbps": dev.memory_bandwidth_gbps, "peak_gflops_fp32": dev.peak_gflops_fp32}
    out = estimate_device(_measured(), "text-generation", "int8-weight", 265e6, 135e6, LLAMA_CFG, profile, host)
    # Same datasheet as the host's measured figures, but the device reaches only half of it: half the rate.
    decode = out["decode_tokens_per_s"]
    assert decode["value"] == pytest.approx(30.0, rel=1e-3)
    assert decode["range"]["value"] == pytest.approx([24.0, 36.0], rel=1e-3)
    # Latencies: the slow end of the band is the high end of the range; p95 gets its own range.
    ttft = out["ttft_ms"]
    assert ttft["value"] == pytest.approx(300.0, rel=1e-3)
    assert ttft["range"]["value"] == pytest.approx([250.0, 375.0], rel=1e-3)
    assert ttft["range"]["p95"] == pytest.approx([275.0, 412.5], rel=1e-3)
    # A profile without cited efficiencies is not taken at its datasheet word: the uncited band is wide.
    plain = _with_device("raspberry-pi-5", bandwidth_efficiency=None, compute_efficiency=None)
    roofs = device_roofs(plain.device)
    assert roofs["value"][0] < dev.memory_bandwidth_gbps and roofs["low"][0] < 0.5 * roofs["high"][0]


def test_int8_and_fp32_peaks_are_never_mixed() -> None:
    """The host side is its measured fp32 roofline, so the device side must be fp32 too, for every method:
    the device's int8 peak changes nothing, and an int8 method scales exactly like a weight-only one."""
    host = {"memory_bandwidth_gbps": 30.0, "peak_gflops_fp32": 100.0}
    profile = load_profile("raspberry-pi-5")
    args = (265e6, 135e6, LLAMA_CFG)
    base = estimate_device(_measured(), "text-generation", "fp32", *args, profile, host)
    for method in ("int8-dynamic", "int8-static", "int8-weight"):
        for int8_peak in (1.0, 614.0, 1e6):
            other = _with_device("raspberry-pi-5", peak_gops_int8=int8_peak)
            assert estimate_device(_measured(), "text-generation", method, *args, other, host) == base
    # ...while the fp32 peak does move the compute-bound prefill.
    faster = _with_device("raspberry-pi-5", peak_gflops_fp32=2 * 153.6)
    assert estimate_device(_measured(), "text-generation", "int8-dynamic", *args, faster, host)["ttft_ms"]["value"] \
        < base["ttft_ms"]["value"]


def test_estimate_never_beats_the_device_roofline() -> None:
    """A host that beat its cached (too low) bandwidth figure must not push the device past its own roofline."""
    profile = _with_device("raspberry-pi-5", bandwidth_efficiency=EXACT, compute_efficiency=EXACT)
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


@pytest.mark.parametrize("eff", [{"value": 0.5, "low": 0.6, "high": 0.7}, {"value": 0.5, "low": 0.4, "high": 1.2},
                                 {"value": 0.5, "low": 0.4, "high": 0.6, "source": "x"}])
def test_efficiency_must_be_an_ordered_fraction_band(eff: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _with_device("raspberry-pi-5", bandwidth_efficiency=eff)

"""Device estimates from a roofline, calibrated by how close this host gets to its own roofline.

time(device) = time(host, measured) × roofline_time(device) / roofline_time(host), where
roofline_time = max(bytes moved / memory bandwidth, FLOPs / peak compute) for the same work. The host's side is
measured; the device's is its datasheet peak derated by a measured efficiency (profile `bandwidth_efficiency`,
`compute_efficiency`), whose low..high band becomes each estimate's `range`. Decode reads
every weight once per token plus the KV cache so far (memory-bound on CPUs); prefill and encoders do
~2 × params FLOPs per token (compute-bound). Every figure this module returns is `estimated: true`.
The host's bandwidth and fp32 matmul peak are measured once per (CPU, cores, ISA flags, threads) and cached as JSON
(`$EDGEKIT_CACHE/host_roofline.json`; delete it to re-measure).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from edgekit.util import cache_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgekit.specs import Profile, Workload

log = logging.getLogger(__name__)

LATENCY_METRICS = ("ttft_ms", "per_token_ms", "latency_ms")
RATE_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "throughput_items_per_s")


def _best(fn: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bandwidth_gbps(torch: Any) -> float:
    buf = torch.ones(128 * 1024 * 1024, dtype=torch.float32)  # 512 MiB: far beyond any cache
    return float(buf.numel() * 4 / _best(buf.sum) / 1e9)


def measure_host(threads: int) -> dict[str, Any]:
    """Memory read bandwidth (512 MiB sum) and fp32 matmul throughput with `threads` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bw = _bandwidth_gbps(torch)
        a = torch.randn(1024, 1024)
        gflops = 2 * 1024**3 / _best(lambda: a @ a) / 1e9
    finally:
        torch.set_num_threads(before)
    return {"memory_bandwidth_gbps": round(bw, 2), "peak_gflops_fp32": round(gflops, 1), "threads": threads,
            "method": "torch sum of 512 MiB / 1024² fp32 matmul, best of 5", "load_average": _loadavg(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _loadavg() -> float | None:
    # Recorded so a figure taken on a busy host can be recognised (delete the cache file to re-measure).
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def host_key(host: dict[str, Any]) -> str:
    """The cache key of a host: CPU name alone is not enough (one name covers VMs with different cores and ISA
    flags, and machines change between sessions)."""
    return f"{host['cpu_model']}|cpus={host.get('cores')}|isa={'+'.join(host.get('isa_flags') or [])}"


def host_roofline(cpu_model: str, threads: int, *, refresh: bool = False) -> dict[str, Any]:
    """The cached host figures, measured on first use (again with `refresh`)."""
    path = cache_dir() / "host_roofline.json"
    key = f"{cpu_model}|threads={threads}"
    try:
        cached: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cached = {}
    if key not in cached or refresh:
        log.info("measuring host memory bandwidth and peak compute (once, cached in %s)", path)
        cached[key] = measure_host(threads)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=2))
        tmp.replace(path)
    figures: dict[str, Any] = dict(cached[key])
    if threads > 1:
        # n threads can always do what one does: a busy shared host can make the n-thread figure come out lower,
        # and the higher host roofline keeps the calibrated device estimate on the pessimistic side.
        one = host_roofline(cpu_model, 1)
        for k in ("memory_bandwidth_gbps", "peak_gflops_fp32"):
            figures[k] = max(figures[k], one[k])
    return figures


def kv_bytes_per_position(config: dict[str, Any], dtype_bytes: int = 4) -> int:
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def work(task: str, weight_bytes: float, params: float, config: dict[str, Any], workload: Workload) -> dict[str, tuple[float, float]]:
    """(bytes, FLOPs) of one unit of each measured quantity: a decode step, a prefill, an encoder batch."""
    if task != "text-generation":
        tokens = workload.batch_size * workload.prompt_tokens
        return {"batch": (weight_bytes, 2.0 * params * tokens)}
    kv = kv_bytes_per_position(config)
    avg_ctx = workload.prompt_tokens + workload.new_tokens / 2
    return {
        "decode": (weight_bytes + kv * avg_ctx, 2.0 * params),
        "prefill": (weight_bytes + kv * workload.prompt_tokens, 2.0 * params * workload.prompt_tokens),
    }


def roof_time(nbytes: float, flops: float, bandwidth_gbps: float, peak_gflops: float) -> float:
    return max(nbytes / (bandwidth_gbps * 1e9), flops / (peak_gflops * 1e9))


def device_roofs(dev: Any) -> dict[str, tuple[float, float]]:
    """Effective (bandwidth GB/s, fp32 GFLOP/s) of the device: datasheet peak × measured efficiency, at the
    efficiency's value and at both ends of its band ("low" = the slow end)."""
    from edgekit.specs import UNCITED_EFFICIENCY

    bw_eff = dev.bandwidth_efficiency or UNCITED_EFFICIENCY
    c_eff = dev.compute_efficiency or UNCITED_EFFICIENCY
    bw, peak = float(dev.memory_bandwidth_gbps), float(dev.peak_gflops_fp32)
    return {case: (bw * getattr(bw_eff, case), peak * getattr(c_eff, case)) for case in ("value", "low", "high")}


def estimate_device(measured: dict[str, Any], task: str, method: str, weight_bytes: float, params: float,
                    config: dict[str, Any], profile: Profile, host: dict[str, Any]) -> dict[str, Any]:
    """Scale the host's measured metrics to the profile's device, each with a `range` from the device's
    efficiency band. Like with like: the host's *measured* fp32 roofline against the device's *derated* fp32
    roofline, whatever the method: an int8 method's gain is already in the host measurement, and comparing the
    device's int8 peak with the host's fp32 peak would count it twice."""
    units = work(task, weight_bytes, params, config, profile.workload)
    roofs = device_roofs(profile.device)
    bandwidth, peak = profile.device.memory_bandwidth_gbps, profile.device.peak_gflops_fp32
    assert bandwidth is not None and peak is not None  # DeviceSpec requires both on a device that is not the host
    datasheet = (float(bandwidth), float(peak))
    which = {"decode_tokens_per_s": "decode", "per_token_ms": "decode", "ttft_ms": "prefill",
             "prefill_tokens_per_s": "prefill", "latency_ms": "batch", "throughput_items_per_s": "batch"}
    out: dict[str, Any] = {}
    for metric, unit_name in which.items():
        if metric not in measured or unit_name not in units:
            continue
        nbytes, flops = units[unit_name]
        host_t = roof_time(nbytes, flops, host["memory_bandwidth_gbps"], host["peak_gflops_fp32"])
        # No device beats its datasheet roofline, however fast the host was against its cached figures.
        bound = _roofline_bound(metric, roof_time(nbytes, flops, *datasheet), profile.workload)
        factors = {case: _factor(metric, roof_time(nbytes, flops, *roof) / host_t) for case, roof in roofs.items()}
        out[metric] = _entry(metric, measured[metric], factors, bound)
    return out


def _factor(metric: str, slowdown: float) -> float:
    """Multiplier on the host figure: latencies grow with the device's slowdown, rates shrink."""
    return slowdown if metric in LATENCY_METRICS else 1 / slowdown


def _entry(metric: str, src: dict[str, Any], factors: dict[str, float], bound: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"estimated": True, "basis": "roofline", "scale": round(factors["value"], 4), "range": {}}
    for p in ("value", "p50", "p95", "p99"):
        if p in src:
            scaled = {case: _clamp(metric, src[p] * f, bound) for case, f in factors.items()}
            entry[p] = round(scaled["value"], 4)
            entry["range"][p] = [round(min(scaled.values()), 4), round(max(scaled.values()), 4)]
    entry["unit"] = src["unit"]
    entry["range_basis"] = "device efficiency band (profile device.*_efficiency low..high)"
    if _clamp(metric, src["value"] * factors["value"], bound) != src["value"] * factors["value"]:
        # The host beat its own cached roofline (a bandwidth figure taken under load): no device beats its own.
        entry["capped_at_device_roofline"] = True
    return entry


def _roofline_bound(metric: str, dev_t: float, workload: Workload) -> float:
    """The device roofline for `metric`: a floor for latencies (ms), a ceiling for rates."""
    per_unit = {"decode_tokens_per_s": 1.0, "prefill_tokens_per_s": float(workload.prompt_tokens),
                "throughput_items_per_s": float(workload.batch_size)}
    if metric in LATENCY_METRICS:
        return dev_t * 1e3
    return per_unit.get(metric, 1.0) / dev_t


def _clamp(metric: str, value: float, bound: float) -> float:
    return max(value, bound) if metric in LATENCY_METRICS else min(value, bound)


def basis(task: str, method: str, weight_bytes: float, params: float, config: dict[str, Any], profile: Profile,
          host: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The inputs of the estimate, and how close this host got to its own roofline (its efficiency)."""
    units = work(task, weight_bytes, params, config, profile.workload)
    detail: dict[str, Any] = {"host": host, "device": profile.device.model_dump(), "weight_bytes": int(weight_bytes),
                              "parameters": int(params), "kv_bytes_per_position": kv_bytes_per_position(config),
                              "device_effective": {k: [round(x, 2) for x in v] for k, v in device_roofs(profile.device).items()},
                              "efficiency_cited": bool(profile.device.bandwidth_efficiency and profile.device.compute_efficiency),
                              "compared": "host measured fp32 roofline vs device derated fp32 roofline"}
    for name, (nbytes, flops) in units.items():
        detail[f"{name}_bytes"] = int(nbytes)
        detail[f"{name}_flops"] = int(flops)
    if "decode" in units and "per_token_ms" in measured:
        roof = roof_time(*units["decode"], host["memory_bandwidth_gbps"], host["peak_gflops_fp32"])
        detail["host_decode_efficiency"] = round(roof / (measured["per_token_ms"]["value"] / 1e3), 3)
    if "batch" in units and "latency_ms" in measured:
        roof = roof_time(*units["batch"], host["memory_bandwidth_gbps"], host["peak_gflops_fp32"])
        detail["host_batch_efficiency"] = round(roof / (measured["latency_ms"]["value"] / 1e3), 3)
    return detail

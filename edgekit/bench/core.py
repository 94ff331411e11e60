"""bench(variant, source, profile) → the report dict (schema edgekit/report@1, docs/internals.md "Report")."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__, progress
from edgekit.artifact import OnnxArtifact
from edgekit.bench.latency import encoder_metrics, generation_metrics, measure_pair, single
from edgekit.errors import BenchError, UnsupportedError
from edgekit.records import Report

if TYPE_CHECKING:
    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.source import SourceModel
    from edgekit.specs import Profile

log = logging.getLogger(__name__)

SCHEMA = Report.SCHEMA
DEFAULT_MAX_TIME_S = 30.0
# >= 8 windows of <= 256 tokens, never across a document. Measured cost on SmolLM2-135M int8-weight (PyTorch +
# ONNX, 1 thread, 2-core AVX-512 EPYC shared with other jobs): 15.6 s for 2,048 tokens vs 7.5 s for 512.
DEFAULT_EVAL_TOKENS = 2048
# Greedy continuations (32 tokens each) checked through the variant's KV cache: 26 s for 8 on the same host,
# mostly the source's step-by-step PyTorch decode.
DEFAULT_DECODE_PROMPTS = 8
# Latencies and sizes: smaller is better, so speedup = source / variant; rates: variant / source.
SMALLER_IS_BETTER = ("ttft_ms", "per_token_ms", "latency_ms", "load_ms", "peak_rss_mb", "model_size_mb")


def _providers(variant: OnnxArtifact, profile: Profile, available: list[str], warnings: list[str]) -> list[str]:
    from edgekit.catalog import load_target

    target = load_target(str(variant.meta.get("target") or profile.target))
    wanted = list(target.execution_providers)
    missing = [p for p in wanted if p not in available]
    if missing:
        warnings.append(f"{', '.join(missing)} not available on this host; measured with CPUExecutionProvider")
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def _token_pool(source: SourceModel, eval_data: Path | None, n: int) -> list[int]:
    from edgekit.bench.fidelity import eval_token_ids

    ids = eval_token_ids(source.load_tokenizer(), eval_data, n)
    if not ids:
        raise BenchError("the eval text tokenized to nothing; give --eval-data with real text")
    return (ids * (n // len(ids) + 1))[:n]  # repeat a short text rather than fail


def _workload_spec(source: SourceModel, profile: Profile, eval_data: Path | None, warnings: list[str]) -> dict[str, Any]:
    wl = profile.workload
    cfg = source.config
    max_pos = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1 << 20)
    if source.task == "text-generation":
        prompt_len = min(wl.prompt_tokens, max(1, max_pos - wl.new_tokens))
        if prompt_len < wl.prompt_tokens:
            warnings.append(f"prompt shortened to {prompt_len} tokens to fit the model's {max_pos} positions")
        return {"prompt": _token_pool(source, eval_data, prompt_len), "new_tokens": wl.new_tokens}
    seq = min(wl.prompt_tokens, max_pos)
    pool = _token_pool(source, eval_data, seq * wl.batch_size)
    return {"batch_ids": [pool[i * seq:(i + 1) * seq] for i in range(wl.batch_size)]}


def _speedup(variant: dict[str, Any], source: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, v in variant.items():
        s = source.get(name)
        if not s or not v.get("value") or not s.get("value"):
            continue
        ratio = s["value"] / v["value"] if name in SMALLER_IS_BETTER else v["value"] / s["value"]
        out[name] = round(ratio, 3)
    return out


def _measure(specs: dict[str, dict[str, Any]], max_time_s: float) -> dict[str, dict[str, Any]]:
    """Interleaved runs of both engines → per engine {metrics, provider, runs, stopped, torch_imported}."""
    spec = next(iter(specs.values()))
    generation = spec["task"] == "text-generation"
    with progress.stage("bench: latency", total=None) as st:
        raw = measure_pair(specs, (lambda r: r[0] + sum(r[1])) if generation else (lambda t: t), max_time_s=max_time_s,
                           on_round=lambda n: st.set_info(f"{n} runs each"))
    out = {}
    for name, r in raw.items():
        if generation:
            metrics = generation_metrics(len(spec["prompt"]), [s[0] for s in r["samples"]], [s[1] for s in r["samples"]])
        else:
            metrics = encoder_metrics(len(spec["batch_ids"]), r["samples"])
        metrics["load_ms"] = single(r["load_ms"], "ms")
        metrics["peak_rss_mb"] = single(r["peak_rss_mb"], "MB")
        out[name] = {"metrics": metrics, **{k: r[k] for k in ("provider", "runs", "stopped", "torch_imported")}}
    return out


def _source_block(source: SourceModel) -> tuple[dict[str, Any], float, float]:
    fp = source.fingerprint
    size_mb = sum(p.stat().st_size for p in source.weight_files) / 1e6
    params = fp.get("parameters") or size_mb * 1e6 / 4  # fp32 weights: 4 bytes each
    block = {"spec": source.spec, "path": str(source.path), "sha256": fp["sha256"], "architecture": source.architecture,
             "model_type": source.model_type, "task": source.task, "parameters": int(params), "size_mb": round(size_mb, 3)}
    return block, size_mb, float(params)


def _check_lineage(variant: OnnxArtifact, source: SourceModel) -> None:
    """The variant must come from this architecture (a distilled student benched against its teacher is fine)."""
    record = variant.meta.get("export", variant.meta) if isinstance(variant.meta.get("export"), dict) else variant.meta
    made_from = (record.get("source") or {}).get("model_type")
    if made_from and made_from != source.model_type:
        raise BenchError(f"the variant was made from a {made_from} model, but --source is a {source.model_type}: wrong --source?")
    vocab = variant.config.get("vocab_size")
    if vocab and source.config.get("vocab_size") and vocab != source.config["vocab_size"]:
        raise BenchError(f"the variant's vocabulary ({vocab}) differs from the source's ({source.config['vocab_size']}): wrong --source?")


def bench(variant: OnnxArtifact, source: SourceModel, profile: Profile, *, eval_data: Path | None = None, on_device: bool = False,
          eval_tokens: int = DEFAULT_EVAL_TOKENS, max_time_s: float = DEFAULT_MAX_TIME_S,
          decode_prompts: int = DEFAULT_DECODE_PROMPTS) -> dict[str, Any]:
    """Measure `variant` (ONNX) against `source` (PyTorch fp32) for `profile`; return the report dict."""
    quality = bench_quality(variant, source, profile, eval_data=eval_data, eval_tokens=eval_tokens,
                            decode_prompts=decode_prompts)
    return bench_performance(variant, source, profile, quality, eval_data=eval_data, on_device=on_device,
                             max_time_s=max_time_s)


def bench_quality(variant: OnnxArtifact, source: SourceModel, profile: Profile, *, eval_data: Path | None = None,
                  eval_tokens: int = DEFAULT_EVAL_TOKENS, decode_prompts: int = DEFAULT_DECODE_PROMPTS,
                  outputs: SourceOutputs | None = None) -> dict[str, Any]:
    """The deterministic half of a bench: fidelity and the decode-path check against the source's (cached)
    outputs. It times nothing, so it may run on any worker at the same time as others (fit's executors)."""
    from edgekit.bench.decode import measure_decode
    from edgekit.bench.fidelity import measure_fidelity
    from edgekit.bench.hostinfo import host_info
    from edgekit.bench.sourceref import source_outputs

    if source.format != "hf":
        raise UnsupportedError(f"{source.spec}: bench compares against a PyTorch source; give the HF model, not ONNX")
    if variant.task != source.task:
        raise BenchError(f"variant task {variant.task} differs from source task {source.task}: wrong --source?")
    _check_lineage(variant, source)
    if eval_tokens < 2:
        raise BenchError(f"--eval-tokens must be at least 2, got {eval_tokens}")
    warnings: list[str] = []
    providers = _providers(variant, profile, host_info()["providers"], warnings)
    if outputs is None:
        outputs = source_outputs(source, eval_data, eval_tokens, decode_prompts)
    with progress.stage("bench: fidelity setup"):
        session = variant.session(threads=1, providers=providers)
    fidelity = measure_fidelity(session, source, eval_data, eval_tokens, outputs)
    decode = measure_decode(session, source, eval_data, decode_prompts, outputs=outputs)
    return {"fidelity": fidelity, "decode": decode, "warnings": warnings, "source_outputs": outputs.record(),
            "eval": {"tokens": eval_tokens, "data": str(eval_data) if eval_data else "builtin:eval"}}


def host_latency(variant: OnnxArtifact, source: SourceModel, profile: Profile, *, eval_data: Path | None = None,
                 max_time_s: float = DEFAULT_MAX_TIME_S) -> dict[str, Any]:
    """Latency of variant and source, interleaved on this host, for the profile's workload and threads (nothing
    else of the profile: fit reuses it for profiles that share both)."""
    from edgekit.bench.hostinfo import host_info

    warnings: list[str] = []
    providers = _providers(variant, profile, host_info()["providers"], [])
    threads = min(profile.workload.threads, os.cpu_count() or 1)
    if threads < profile.workload.threads:
        # More threads than cores only measures contention; the device estimate scales to the device's cores.
        warnings.append(f"profile asks for {profile.workload.threads} threads; this host has {threads} cores, measured with {threads}")
    spec = {"task": source.task, "threads": threads, "max_time_s": max_time_s,
            **_workload_spec(source, profile, eval_data, warnings)}
    measured = _measure({"variant": {**spec, "engine": "onnx", "model_file": str(variant.model_file), "providers": providers},
                         "source": {**spec, "engine": "torch", "source": str(source.path)}}, max_time_s)
    return {"measured": measured, "threads": threads, "providers": providers, "warnings": warnings}


def bench_performance(variant: OnnxArtifact, source: SourceModel, profile: Profile, quality: dict[str, Any], *,
                      eval_data: Path | None = None, on_device: bool = False, max_time_s: float = DEFAULT_MAX_TIME_S,
                      latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """The timed half (`host_latency`, unless given), the device estimate, and the report with `quality`."""
    import copy

    from edgekit.bench.hostinfo import host_info

    host = host_info()
    if latency is None:
        latency = host_latency(variant, source, profile, eval_data=eval_data, max_time_s=max_time_s)
    latency = copy.deepcopy(latency)  # the report's blocks are its own, even when two reports share a measurement
    warnings: list[str] = [*quality["warnings"], *latency["warnings"]]
    providers, threads = latency["providers"], latency["threads"]
    src_block, src_size, params = _source_block(source)
    var, src = latency["measured"]["variant"], latency["measured"]["source"]
    if var.get("torch_imported"):
        warnings.append("torch was loaded in the ONNX measurement process; its peak RSS includes torch")
    var["metrics"]["model_size_mb"] = single(variant.size_mb, "MB")
    src["metrics"]["model_size_mb"] = single(src_size, "MB")
    performance: dict[str, Any] = {
        "variant": var["metrics"], "source": src["metrics"], "speedup": _speedup(var["metrics"], src["metrics"]),
        "device": None, "roofline": None, "on_device": on_device,
        "runs": {k: {"runs": r["runs"], "stopped": r["stopped"], "threads": threads, "interleaved": True} for k, r in (("variant", var), ("source", src))},
    }
    if not (profile.device.host or on_device):
        performance["device"], performance["roofline"] = _estimate(variant, source, profile, host, var["metrics"], params, threads)
    return {
        "schema": SCHEMA,
        "edgekit_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": host,
        "source": src_block,
        "variant": _variant_block(variant, var["provider"], providers, host),
        "profile": {"name": profile.name, "target": profile.target, "device": profile.device.model_dump(),
                    "workload": profile.workload.model_dump()},
        "performance": performance,
        "fidelity": quality["fidelity"],
        "decode": quality["decode"],
        "eval": quality["eval"],
        "gate": None,
        "warnings": warnings,
    }


def _variant_block(variant: OnnxArtifact, provider: str, requested: list[str], host: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(variant.path), "method": variant.method, "target": variant.meta.get("target"),
            "task": variant.task, "files": [{"name": p.name, "bytes": p.stat().st_size} for p in variant.model_files],
            "size_mb": round(variant.size_mb, 3), "provider": provider, "providers_requested": requested}


def _estimate(variant: OnnxArtifact, source: SourceModel, profile: Profile, host: dict[str, Any], measured: dict[str, Any],
              params: float, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from edgekit.bench import roofline

    with progress.stage("bench: device estimate"):
        hw = roofline.host_roofline(roofline.host_key(host), threads)
        weight_bytes = variant.size_mb * 1e6
        args = (source.task, variant.method, weight_bytes, params, source.config, profile)
        basis = roofline.basis(*args, hw, measured)
        if max(basis.get("host_decode_efficiency", 0), basis.get("host_batch_efficiency", 0)) > 1.0:
            # Faster than the cached host roofline: that figure was taken on a busier host. Measure again.
            hw = roofline.host_roofline(roofline.host_key(host), threads, refresh=True)
            basis = roofline.basis(*args, hw, measured)
        return roofline.estimate_device(measured, *args, hw), basis

"""compress(artifact, method, target, out): quantize an exported fp32 ONNX folder for a target.

Flow: plan (which nodes, what stays float) → handler (onnxruntime's quantizer) → quick checks against the
fp32 parent (top-1 / cosine, speed) → optional accuracy-aware fallback (`max_top1_drop`) → atomic write of
the same folder layout plus `compress.json`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import progress
from edgekit.artifact import MODEL_FILE, OnnxArtifact
from edgekit.compress import checks, graph, shared
from edgekit.compress.handlers import Plan, run_handler
from edgekit.compress.specs import MethodSpec, WeightOnlySpec, is_rotated, method_spec
from edgekit.errors import InputError, UnsupportedError
from edgekit.export.rotation import ROTATE_MARK
from edgekit.specs import Target
from edgekit.util import atomic_dir, peak_rss_mb, release_memory

if TYPE_CHECKING:
    from onnx import ModelProto
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

SCHEMA = "edgekit/compress@1"
FALLBACK_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class _Job:
    """One compress run's state, shared by its steps: what is quantized, how, checked on what, written where."""

    artifact: OnnxArtifact
    spec: MethodSpec
    plan: Plan
    parent: Any  # the fp32 parent's onnxruntime session
    seqs: list[list[int]]
    feeds: list[dict[str, Any]]
    tmp: Path
    record: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    # The fp32 graph's weight nodes and fused Attention nodes: what _decisions reads once the graph itself is gone.
    weights: list[graph.WeightNode] = field(default_factory=list)
    attention: set[str] = field(default_factory=set)
    # The prepared fp32 graph, handed to the first quantization (which consumes it); None: load a fresh copy.
    prepared: Any = None


def compress(artifact: OnnxArtifact, method: str | MethodSpec, target: Target, out: Path | str, *,
             calibration: Path | str | None = None, calibration_samples: int = 16,
             max_top1_drop: float | None = None, checks_enabled: bool = True, **overrides: Any) -> OnnxArtifact:
    """Quantize `artifact` with `method` for `target` into `out` (written atomically) and return the result."""

    from edgekit.catalog import check_method

    t0 = time.perf_counter()
    spec = method if isinstance(method, MethodSpec) else method_spec(method, target, rotated=is_rotated(artifact.meta),
                                                                      **overrides)
    check_method(spec.method, target)
    if artifact.method != "fp32":
        raise UnsupportedError(f"{artifact.path} is already {artifact.method}: compress the fp32 export instead")
    if max_top1_drop is not None and not 0 <= max_top1_drop <= 1:
        raise InputError(f"--max-top1-drop must be within 0..1, got {max_top1_drop}")
    out = Path(out)
    if out.resolve() == artifact.path.resolve():
        raise InputError(f"{out}: the output folder must differ from the model being compressed")
    record = _base_record(artifact, spec, target)
    parent = artifact.session(prepack=False)  # these sessions check numbers; the speed check opens its own
    seqs, feeds = _calibration(artifact, parent, calibration, calibration_samples, record)
    # Not held while the quantizer holds the fp32 graph (SmolLM2: 0.8 GB each); the checks open it again.
    del parent
    release_memory()
    with atomic_dir(out) as tmp:
        work = tmp / ".work"
        work.mkdir()
        base, converted = _parent_graph(artifact, spec)
        record["nodes"] = {"converted_gemm": converted}
        job = _Job(artifact, spec, _plan(base, spec, artifact, work, feeds), None, seqs, feeds, tmp, record, t0,
                   graph.weight_nodes(base), {n.name for n in base.graph.node if n.op_type == "Attention"})
        if max_top1_drop is None:
            # Handed over, not shared: the handler consumes it and it is freed once the variant is on disk, so one
            # fp32 graph is in memory instead of two (0.6 GB for SmolLM2), and none during the checks.
            job.prepared = base
            del base
            check = _quantize_checked(job)
        else:
            check = _fallback(job, base, _quantize_checked(job), max_top1_drop)
        _finish(job, check)
        shutil.rmtree(work, ignore_errors=True)
    return OnnxArtifact.load(out)


def _base_record(artifact: OnnxArtifact, spec: MethodSpec, target: Target) -> dict[str, Any]:
    from edgekit.export import versions

    meta = artifact.meta
    return {"schema": SCHEMA, "task": artifact.task, "method": spec.method, "target": target.name,
            "source": meta.get("source"), "settings": spec.settings(), "timings_s": {}, "warnings": [],
            "versions": versions(), "export": meta}


def _calibration(artifact: OnnxArtifact, parent: InferenceSession, path: Path | str | None, n: int,
                 record: dict[str, Any]) -> tuple[list[list[int]], list[dict[str, Any]]]:
    from edgekit.compress.calibration import model_feeds, token_sequences
    from edgekit.data import load_texts

    if n < 1:
        raise InputError(f"--calibration-samples must be at least 1, got {n}")
    texts = load_texts(path, default="calibration", n=max(n * 4, 32))
    if not (artifact.path / "tokenizer.json").is_file():
        raise InputError(f"{artifact.path}: no tokenizer.json, needed to tokenize calibration text")
    seqs = token_sequences(artifact.path, texts, n)
    if not seqs:
        raise InputError(f"{path or 'built-in calibration text'}: no usable text for calibration")
    with progress.stage("compress: calibration feeds"):
        feeds = model_feeds(parent, artifact.task, seqs)
    record["calibration"] = {"data": str(path) if path else "built-in corpus (calibration half)", "samples": len(seqs),
                             "tokens": sum(len(s) for s in seqs), "feeds": len(feeds)}
    return seqs, feeds


def _plan(model: ModelProto, spec: MethodSpec, artifact: OnnxArtifact, work: Path, feeds: list[dict[str, Any]]) -> Plan:
    nodes = graph.weight_nodes(model)
    keep = {w.name for w in nodes if graph.match(w.name, spec.keep_fp) or graph.match(w.weight, spec.keep_fp)}
    # The rotation's own MatMuls (edgekit.export.rotation) stay float: int8 inputs there undo the rotation.
    keep |= {w.name for w in nodes if ROTATE_MARK in w.name}
    vocab = artifact.config.get("vocab_size")
    head, embedding = graph.lm_head(model), graph.token_embedding(model, vocab if isinstance(vocab, int) else None)
    tied = isinstance(spec, WeightOnlySpec) and spec.embed_bits > 0 and shared.is_tied(model, embedding, head)
    return Plan(work=work, exclude=keep, lm_head=head, feeds=feeds, embedding=embedding, tied=tied,
                gathers=[w.name for w in nodes if w.op == "Gather"])


def _parent_graph(artifact: OnnxArtifact, spec: MethodSpec) -> tuple[ModelProto, list[str]]:
    """The fp32 parent as the quantizers take it: every node named, Gemms as MatMuls (not for fp16); and which
    Gemms were converted."""
    from edgekit.export.stream import load_model

    base = load_model(artifact.model_file)
    graph.ensure_names(base)
    return base, graph.gemm_to_matmul(base) if spec.method != "fp16" else []


def _quantize_checked(job: _Job) -> dict[str, Any]:
    """Quantize `job.prepared` (the parent graph, names ensured and Gemms converted, consumed here) or else a fresh
    copy of the parent with `job.plan`, save it to `job.tmp`, and check it against the parent."""

    from edgekit.runtime import make_session

    spec, artifact, tmp, record = job.spec, job.artifact, job.tmp, job.record
    base, job.prepared = job.prepared, None
    if base is None:
        base = _parent_graph(artifact, spec)[0]
    t = time.perf_counter()
    with progress.stage(f"compress: {spec.method}"):
        variant = run_handler(spec, base, job.plan)
    record["timings_s"]["quantize"] = round(record["timings_s"].get("quantize", 0) + time.perf_counter() - t, 2)
    for stale in tmp.glob(MODEL_FILE + "*"):
        stale.unlink()
    from edgekit.compress.handlers import save_model

    save_model(variant, tmp / MODEL_FILE)
    del variant, base  # on disk now; _finish reads the graph back once the sessions are gone
    release_memory()
    if job.parent is None:  # the larger session first: the smaller one's load peak then lands on less
        job.parent = artifact.session(prepack=False)
    try:
        session = make_session(tmp / MODEL_FILE)
    except Exception as exc:
        from edgekit.errors import CompressError

        raise CompressError(f"{spec.method}: onnxruntime cannot load the quantized model "
                            f"({str(exc).splitlines()[0][:200]})") from exc
    with progress.stage("compress: accuracy check"):
        check = checks.agreement(job.parent, session, artifact.task, job.seqs, spec.method)
    check["session"] = session
    return check


def _fallback(job: _Job, base: ModelProto, check: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Keep the most sensitive weight MatMuls in float, more each round, until top-1 drops at most `max_drop`."""
    spec, plan, record = job.spec, job.plan, job.record
    steps: list[dict[str, Any]] = [{"kept": 0, "score": checks.primary(check)}]
    record["fallback"] = {"max_top1_drop": max_drop, "steps": steps, "kept": [], "held": True}
    if 1 - checks.primary(check) <= max_drop:
        return check
    bits = spec.bits if isinstance(spec, WeightOnlySpec) else 8
    block = spec.block_size if isinstance(spec, WeightOnlySpec) else 128
    candidates = [w.name for w in graph.weight_nodes(base, ("MatMul",)) if w.name not in plan.exclude]
    scores = graph.sensitivity(base, candidates, bits, block)
    ranked = sorted(scores, key=lambda n: -scores[n])
    user_keep = set(plan.exclude)
    # A 4-bit method falls back to 8 bit (near lossless, a quarter of fp32's bytes); others to float.
    to_int8 = isinstance(spec, WeightOnlySpec) and spec.bits == 4
    record["fallback"]["to"] = "int8" if to_int8 else "fp32"
    for frac in FALLBACK_FRACTIONS:
        k = max(1, math.ceil(len(ranked) * frac))
        if to_int8:
            plan.upgrade = set(ranked[:k])
        else:
            plan.exclude = user_keep | set(ranked[:k])
        check = _quantize_checked(job)
        steps.append({"kept": k, "score": checks.primary(check)})
        log.info("fallback: %d most sensitive MatMuls kept in float → %.4f", k, checks.primary(check))
        if 1 - checks.primary(check) <= max_drop:
            break
    record["fallback"]["kept"] = [{"name": n, "sensitivity": round(scores[n], 5)} for n in ranked[:k]]
    record["fallback"]["held"] = 1 - checks.primary(check) <= max_drop
    if not record["fallback"]["held"]:
        msg = (f"--max-top1-drop {max_drop}: still {1 - checks.primary(check):.3f} below fp32 with every MatMul "
               f"at {record['fallback']['to']}")
        log.warning(msg)
        record["warnings"].append(msg)
    return check


def _finish(job: _Job, check: dict[str, Any]) -> None:
    """Write compress.json beside the variant: decisions, checks, speed, I/O, sizes, timings."""
    from edgekit.export import io_signature
    from edgekit.export.stream import load_model

    record, tmp, artifact = job.record, job.tmp, job.artifact
    session = check.pop("session")
    job.parent = None  # unpacked weights (it checked numbers); timed, the parent runs as it would be deployed
    release_memory()
    with progress.stage("compress: speed check"):
        record["speed"] = checks.speed(artifact.session(), session, job.feeds)
    del session
    release_memory()
    variant = load_model(tmp / MODEL_FILE)  # read back: _quantize_checked freed its copy before the checks
    record["nodes"].update(_decisions(job, variant))
    record["ops"] = graph.op_counts(variant)
    record["check"] = check
    if "warning" in check:
        log.warning("accuracy check: %s", check["warning"])
        record["accuracy_warning"] = check["warning"]
        record["warnings"].append(check["warning"])
    if "warning" in record["speed"]:
        log.warning("speed check: %s", record["speed"]["warning"])
        record["speed_warning"] = record["speed"]["warning"]
        record["warnings"].append(record["speed"]["warning"])
    record["warnings"] += job.plan.notes
    for side in artifact.side_files():
        shutil.copy2(side, tmp / side.name)
    record["io"] = io_signature(tmp / MODEL_FILE)
    record["with_past"] = any(i["name"].startswith("past_key_values") for i in record["io"]["inputs"])
    before = artifact.size_mb
    after = sum(p.stat().st_size for p in tmp.glob(MODEL_FILE + "*")) / 1e6
    record["size_mb_before"], record["size_mb"] = round(before, 3), round(after, 3)
    record["size_ratio"] = round(after / before, 4) if before else None
    record["timings_s"]["total"] = round(time.perf_counter() - job.t0, 2)
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    (tmp / "compress.json").write_text(json.dumps(record, indent=2, default=str))


def _decisions(job: _Job, variant: ModelProto) -> dict[str, Any]:
    """What happened to each weight node, read from the variant: a float weight that is gone was quantized."""
    from onnx import TensorProto

    plan, spec = job.plan, job.spec
    after = {i.name: i.data_type for i in variant.graph.initializer}
    head_bits = getattr(spec, "lm_head_bits", None)
    decisions: dict[str, str] = {}
    for w in job.weights:
        if w.name in plan.exclude:
            decisions[w.name] = "kept fp32: " + ("--keep-fp" if graph.match(w.name, spec.keep_fp)
                                                  or graph.match(w.weight, spec.keep_fp) else "sensitivity fallback")
        elif w.weight not in after:
            decisions[w.name] = _bits_label(spec, w, plan, head_bits)
        elif after[w.weight] == TensorProto.FLOAT16:
            decisions[w.name] = "fp16"
        else:
            decisions[w.name] = "kept fp32: " + _why_kept(spec, w, plan, head_bits)
    # A fused encoder Attention carries its QKV weights itself; quantize_dynamic turns it into QAttention.
    for n in variant.graph.node:
        if n.op_type == "QAttention" and n.name.removesuffix("_quant") in job.attention:
            decisions[n.name.removesuffix("_quant")] = "int8: QAttention"
    counts: dict[str, int] = {}
    for d in decisions.values():
        key = d.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return {"decisions": decisions, "counts": counts,
            "quantized": sum(1 for d in decisions.values() if not d.startswith("kept")),
            "kept": sum(1 for d in decisions.values() if d.startswith("kept"))}


def _bits_label(spec: MethodSpec, w: graph.WeightNode, plan: Plan, head_bits: int | None) -> str:
    if isinstance(spec, WeightOnlySpec):
        if w.op == "Gather":
            return f"int{plan.shared_bits}: shared with the lm_head" if plan.shared_bits else f"int{spec.embed_bits}"
        if w.name == plan.lm_head and head_bits:
            return f"int{head_bits}"
        if w.name in plan.upgrade:
            return "int8: sensitivity fallback"
        return f"int{spec.bits}"
    return "int8"


def _why_kept(spec: MethodSpec, w: graph.WeightNode, plan: Plan, head_bits: int | None) -> str:
    if w.name == plan.lm_head and head_bits == 0:
        return "lm_head_bits=0"
    if w.op == "Gather":
        return "embedding not quantized by this method" if w.name == plan.embedding else "not a token embedding"
    if w.op == "Gemm":
        return "Gemm not converted (transA/alpha/beta), the quantizer skips it"
    return "the quantizer skipped it"

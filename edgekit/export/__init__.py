"""SourceModel → ONNX for a target, through optimum-onnx, then offline graph optimization and parity checks.

optimum writes the graph (decoder-with-past for generation, so decode is one token per step); onnxruntime
optimizes it for the target; every graph that ships has passed `parity.check_parity` against PyTorch.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__, progress
from edgekit.artifact import MODEL_FILE, SIDE_FILES, OnnxArtifact
from edgekit.errors import EdgekitError, ExportError, InputError, ParityError, UnsupportedError
from edgekit.source import SourceModel
from edgekit.specs import RotateSettings, Target
from edgekit.util import atomic_dir, peak_rss_mb, release_memory

if TYPE_CHECKING:
    from edgekit.export.parity import ParityResult, TorchReference

log = logging.getLogger(__name__)

OPTIMUM_TASKS = {
    "text-generation": "text-generation-with-past",
    "text-classification": "text-classification",
    "feature-extraction": "feature-extraction",
}
# Above this, weights go to external data (protobuf's hard limit is 2 GB).
EXTERNAL_DATA_BYTES = 1_500_000_000


def export(source: SourceModel, target: Target, out: Path | str, *, opset: int | None = None,
           parity: bool = True, graph: str | None = None, rotate: RotateSettings | str | None = None) -> OnnxArtifact:
    """Export `source` to an ONNX folder at `out` (written atomically) and return it.

    `graph` picks the writer: "fused" (edgekit.fused: GroupQueryAttention graph for Llama-family decoders),
    "optimum" (traced by optimum-onnx), or "auto" (fused where supported); default: the target's. `rotate`: settings
    or a mode over the target's (edgekit.export.rotation)."""
    out = Path(out)
    rot = _rotation_for(source, target, graph, rotate)
    if source.format == "onnx":
        return _adopt_onnx(source, target, out)
    if source.task not in OPTIMUM_TASKS:
        raise UnsupportedError(f"task '{source.task}' cannot be exported (supported: {', '.join(OPTIMUM_TASKS)})")
    writer = choose_writer(source, graph or target.export.graph)
    record: dict[str, Any] = {
        "schema": "edgekit/export@1", "task": source.task, "method": "fp32", "target": target.name,
        "source": source.fingerprint, "timings_s": {}, "versions": versions(), "graph": {"writer": writer},
        "rotation": {"mode": "off"}}
    with atomic_dir(out) as tmp:
        raw = tmp / "raw"
        t0 = time.perf_counter()
        reference = _write_graph(source, writer, raw, opset or target.export.opset, record, parity=parity, rot=rot)
        record["timings_s"]["export"] = round(time.perf_counter() - t0, 2)
        chosen = raw / MODEL_FILE
        if parity:
            with progress.stage("export: parity (raw graph)"):
                record["parity_raw"] = _parity(source, chosen, reference, "export").to_dict()
        t1 = time.perf_counter()
        with progress.stage(f"export: optimize ({target.optimize.graph_level})"):
            if writer == "fused":  # already fused; the device session applies the rest at load time
                optimized, record["optimization"] = None, {"graph_level": "fused by writer"}
            else:
                optimized, record["optimization"] = _optimize(source, raw, tmp / "opt", target)
        record["timings_s"]["optimize"] = round(time.perf_counter() - t1, 2)
        if optimized is not None and parity:
            try:
                with progress.stage("export: parity (optimized graph)"):
                    record["parity"] = _parity(source, optimized, reference, "optimized graph").to_dict()
                chosen = optimized
            except ParityError as exc:
                log.warning("optimized graph failed parity, shipping the unoptimized one: %s", exc.message)
                record["optimization"]["fallback"] = exc.message
                record["parity"] = record["parity_raw"]
        elif optimized is not None:
            chosen = optimized
        elif parity:
            record["parity"] = record["parity_raw"]
        record["optimization"]["shipped"] = "optimized" if chosen == optimized else "raw"
        _finalize(chosen, raw, tmp, record)
        record["timings_s"]["total"] = round(time.perf_counter() - t0, 2)
        record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
    return OnnxArtifact.load(out)


def _write_graph(source: SourceModel, writer: str, raw: Path, opset: int, record: dict[str, Any], *,
                 parity: bool, rot: RotateSettings) -> TorchReference | None:
    """The raw graph into `raw`, and PyTorch's parity outputs (None without parity).

    They are computed while the model is loaded anyway (the fused writer reads it; optimum loads a copy of its own,
    so that path loads ours after it), and the model is freed before any ONNX session opens."""
    model = source.load_model() if writer == "fused" else None
    # The fused writer consumes the model once the parity outputs of the original are taken: it rotates it in place
    # (a copy would hold the fp32 model twice: SmolLM2's export peak 2,157 vs ~1,670 MB) and frees each layer once
    # written.
    reference = _torch_reference(source, model) if parity and model is not None else None
    with progress.stage(f"export: onnx graph ({writer})"):
        if writer == "fused":
            record["graph"] = _fused_export(source, model, raw, opset, rot, consume=True)
            record["rotation"] = record["graph"].get("rotation", record["rotation"])
        else:
            _optimum_export(source, raw, opset)
    if parity and reference is None:
        reference = _torch_reference(source, model)
    del model
    release_memory()  # give its heap back before a session of the same size is created
    return reference


def _torch_reference(source: SourceModel, model: Any) -> TorchReference:
    from edgekit.export.parity import torch_reference

    with progress.stage("export: PyTorch reference outputs"):
        return torch_reference(source, model)


def _parity(source: SourceModel, model_file: Path, reference: TorchReference | None, stage: str) -> ParityResult:
    from edgekit.export.parity import check_parity

    return check_parity(source, model_file, stage=stage, reference=reference)


def choose_writer(source: SourceModel, wanted: str) -> str:
    """"fused" or "optimum" for this source; asking for "fused" where it cannot be written is an error."""
    from edgekit.export import fused

    if wanted == "optimum" or source.task != "text-generation":
        if wanted == "fused":
            raise UnsupportedError(f"the fused writer writes decoders only, not {source.task}; use --graph optimum")
        return "optimum"
    reason = fused.unsupported_reason(source.model_type, source.config)
    if reason is None:
        return "fused"
    if wanted == "fused":
        raise UnsupportedError(f"the fused writer does not support {reason}; use --graph optimum")
    log.info("fused writer does not cover %s: exporting through optimum", reason)
    return "optimum"


def _rotation_for(source: SourceModel, target: Target, graph: str | None,
                  rotate: RotateSettings | str | None) -> RotateSettings:
    """The rotation this export applies. Asked for explicitly where the fused writer cannot write: UnsupportedError;
    a target's default rotation is skipped there (a target serves encoders and traced graphs too)."""
    from edgekit.export import fused

    rot = rotate_settings(target, rotate)
    if rot.mode == "off":
        return rot
    try:
        writes_fused = source.format != "onnx" and source.task in OPTIMUM_TASKS and \
            choose_writer(source, graph or target.export.graph) == "fused"
    except UnsupportedError:
        writes_fused = False
    refused = fused.rotation_refused(source.model_type) if writes_fused else None
    if writes_fused and not refused:
        return rot
    if rotate is None:
        log.info("the target's rotation (%s) is not applied to %s: %s", rot.mode, source.spec,
                 refused or "it needs the fused writer")
        return RotateSettings()
    if refused:
        raise UnsupportedError(f"--rotate {rot.mode}: {refused}; use --rotate off")
    raise UnsupportedError(f"--rotate needs the fused writer (Llama/Mistral/Qwen2/Phi-3 decoders from PyTorch), which "
                           f"does not write {source.spec}; use --rotate off")


def rotate_settings(target: Target, rotate: RotateSettings | str | None) -> RotateSettings:
    """The rotation to apply: explicit settings, a mode name over the target's settings, or the target's."""
    if isinstance(rotate, RotateSettings):
        return rotate
    base = target.export.rotate
    if rotate is None:
        return base
    try:
        return RotateSettings(**{**base.model_dump(), "mode": rotate})
    except ValueError as exc:
        raise InputError(f"--rotate {rotate!r}: expected off, residual, heads or full") from exc


def _fused_export(source: SourceModel, model: Any, raw: Path, opset: int, rot: RotateSettings, *,
                  consume: bool = False) -> dict[str, Any]:
    from edgekit.export import fused

    raw.mkdir(parents=True)
    info = fused.write(model, raw / MODEL_FILE, opset=opset, rotate=rot, consume=consume)
    for name in SIDE_FILES:
        if (source.path / name).is_file():
            shutil.copy2(source.path / name, raw / name)
    return info


def _optimum_export(source: SourceModel, raw: Path, opset: int) -> None:
    import warnings

    from optimum.exporters.onnx import main_export

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(
                str(source.path), str(raw), task=OPTIMUM_TASKS[source.task], opset=opset, do_validation=False,
                trust_remote_code=source.trust_remote_code, local_files_only=True, library_name="transformers",
            )
    except EdgekitError:
        raise
    except (KeyError, ValueError, NotImplementedError) as exc:
        text = " ".join(str(exc).split())[:300]
        if "not supported" in text or "is not supported" in text:
            raise UnsupportedError(f"optimum-onnx cannot export {source.model_type} for {source.task}: {text}") from exc
        raise ExportError(f"export of {source.spec} failed: {text}") from exc
    except Exception as exc:
        raise ExportError(f"export of {source.spec} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    if not (raw / MODEL_FILE).is_file():
        found = sorted(p.name for p in raw.glob("*.onnx"))
        raise ExportError(f"optimum wrote {found or 'no ONNX files'}, expected a single {MODEL_FILE}")


def _op_counts(model_file: Path) -> Counter[str]:
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    return Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in graph.node)


def _optimize(source: SourceModel, raw: Path, opt_dir: Path, target: Target) -> tuple[Path | None, dict[str, Any]]:
    """Offline onnxruntime optimization; transformer fusions for BERT-style encoders."""
    level = target.optimize.graph_level
    info: dict[str, Any] = {"graph_level": level}
    if level == "disable":
        return None, info
    opt_dir.mkdir()
    out_file = opt_dir / MODEL_FILE
    before = _op_counts(raw / MODEL_FILE)
    try:
        if source.model_type == "bert":
            _bert_fusions(source, raw / MODEL_FILE, out_file, info)
        else:
            _ort_offline(raw / MODEL_FILE, out_file, level)
    except Exception as exc:  # an optimizer failure must not fail the export: ship the raw graph instead
        log.warning("graph optimization failed (%s); shipping the unoptimized graph", exc)
        info["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return None, info
    after = _op_counts(out_file)
    info["nodes_before"], info["nodes_after"] = sum(before.values()), sum(after.values())
    info["fused_ops"] = {op: n for op, n in sorted(after.items()) if op not in before}
    return out_file, info


def _ort_offline(src: Path, dst: Path, level: str) -> None:
    import onnxruntime as ort

    # "all" adds layout transforms specific to the build host's ISA; offline we stop at "extended" so the
    # graph stays portable, and the device's session applies the rest at load time.
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    opts.optimized_model_filepath = str(dst)
    if src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob("*.data")) > EXTERNAL_DATA_BYTES:
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", MODEL_FILE + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _bert_fusions(source: SourceModel, src: Path, dst: Path, info: dict[str, Any]) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = source.config
    options = FusionOptions("bert")
    # onnxruntime 1.32's CPU SkipLayerNormalization kernel took 24 ms of a 127 ms MiniLM int8 batch (8x128, one
    # thread); Add + LayerNormalization computes the same in 6 ms (benchmarks/README.md, "MiniLM").
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    model = optimize_model(
        str(src), model_type="bert", num_heads=int(cfg.get("num_attention_heads", 0)),
        hidden_size=int(cfg.get("hidden_size", 0)), opt_level=1, use_gpu=False, optimization_options=options,
    )
    info["transformer_fusions"] = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(dst), use_external_data_format=False)


def _finalize(chosen: Path, raw: Path, tmp: Path, record: dict[str, Any]) -> None:
    """Move the shipped graph (+ data) and side files to the top of the output folder."""
    import onnx

    if record.get("graph", {}).get("writer") == "edgekit.fused" and chosen == raw / MODEL_FILE:
        # The fused writer already wrote the final layout (model.onnx[.data]): move it, not load + save (2 copies).
        data = raw / (MODEL_FILE + ".data")
        record["external_data"] = data.is_file()
        shutil.move(str(chosen), str(tmp / MODEL_FILE))
        if data.is_file():
            shutil.move(str(data), str(tmp / data.name))
    else:
        proto = onnx.load(str(chosen))
        total = sum(len(t.raw_data) for t in proto.graph.initializer)
        record["external_data"] = total > EXTERNAL_DATA_BYTES
        onnx.save_model(proto, str(tmp / MODEL_FILE), save_as_external_data=record["external_data"],
                        all_tensors_to_one_file=True, location=MODEL_FILE + ".data", size_threshold=1024)
        del proto
    for name in SIDE_FILES:
        if (raw / name).is_file():
            shutil.copy2(raw / name, tmp / name)
    record["io"] = io_signature(tmp / MODEL_FILE)
    record["with_past"] = any(i["name"].startswith("past_key_values") for i in record["io"]["inputs"])
    record["size_mb"] = round(sum(p.stat().st_size for p in tmp.glob(MODEL_FILE + "*")) / 1e6, 3)
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(tmp / "opt", ignore_errors=True)


def io_signature(model_file: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    from edgekit.export.stream import load_skeleton

    try:
        graph = load_skeleton(model_file).graph
    except Exception as exc:  # protobuf raises DecodeError/RuntimeError on damaged files
        raise InputError(f"{model_file}: not a readable ONNX model ({' '.join(str(exc).split())[:120]})") from exc

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": shape})
        return out

    inits = {i.name for i in graph.initializer}
    return {"inputs": describe(v for v in graph.input if v.name not in inits), "outputs": describe(graph.output)}


def _adopt_onnx(source: SourceModel, target: Target, out: Path) -> OnnxArtifact:
    """An ONNX source is already exported: copy it as is and say so in export.json."""
    with atomic_dir(out) as tmp:
        for path in source.path.iterdir():
            if path.is_file() and path.name not in ("export.json", "compress.json"):
                shutil.copy2(path, tmp / path.name)
        record: dict[str, Any] = {
            "schema": "edgekit/export@1", "task": source.task, "method": "fp32", "target": target.name,
            "source": source.fingerprint, "adopted": True, "io": io_signature(tmp / MODEL_FILE), "versions": versions(),
        }
        record["with_past"] = any(i["name"].startswith("past_key_values") for i in record["io"]["inputs"])
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
    return OnnxArtifact.load(out)


def versions() -> dict[str, str]:
    """The versions of edgekit and the libraries that shape a graph, for export.json and compress.json."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"edgekit": __version__}
    for pkg in ("onnxruntime", "onnx", "transformers", "optimum", "optimum-onnx", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out

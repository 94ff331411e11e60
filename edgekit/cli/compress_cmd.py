"""`edgekit compress MODEL --method M --target T -o DIR`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.options import common_options, echo, emit_json, note, table

if TYPE_CHECKING:
    from edgekit.artifact import OnnxArtifact
    from edgekit.specs import Target


@click.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help="fp16, int8-weight, int8-dynamic, int8-static, int4-rtn, int4-hqq, int4-gptq.")
@click.option("--target", "-t", "target_name", required=True, help="Target name or YAML path (e.g. x86-avx2).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--task", default=None, help="Force the task when MODEL is a SOURCE that needs exporting first.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration text, one sample a line (default: built-in Lee corpus text).")
@click.option("--calibration-samples", type=int, default=16, show_default=True, help="Calibration sequences.")
@click.option("--block-size", type=int, default=None, help="Weight-only block size (default: the target's).")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="Weight-only methods: MatMulNBits compute, 4 = int8 activations (fast, the targets' default), "
                   "1 = float (keeps more top-1; 8-bit has no fast float kernel).")
@click.option("--keep-fp", default=None, help="Comma-separated node names (or substrings) to keep in float.")
@click.option("--max-top1-drop", type=float, default=None,
              help="Keep the most sensitive MatMuls in float until top-1 vs fp32 drops at most this much.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint to run.")
@common_options
def compress(model: str, method: str, target_name: str, out: Path, task: str | None, calibration: Path | None,
             calibration_samples: int, block_size: int | None, accuracy_level: int | None, keep_fp: str | None,
             max_top1_drop: float | None, trust_remote_code: bool, as_json: bool) -> None:
    """Quantize MODEL (an exported folder, or a SOURCE exported first) for a target."""
    from edgekit.catalog import load_target
    from edgekit.compress import compress as run_compress
    from edgekit.compress.specs import is_rotated, method_spec

    if accuracy_level is not None and not (method.startswith("int4-") or method == "int8-weight"):
        raise click.BadParameter(f"applies to int8-weight and int4-* methods, not {method}", param_hint="--accuracy-level")
    target = load_target(target_name)
    keep = tuple(n.strip() for n in keep_fp.split(",") if n.strip()) if keep_fp else None
    overrides: dict[str, Any] = {"block_size": block_size, "keep_fp": keep, "accuracy_level": accuracy_level}
    method_spec(method, target, **overrides)  # bad options fail here, before any export
    options: dict[str, Any] = {"calibration": calibration, "calibration_samples": calibration_samples,
                               "max_top1_drop": max_top1_drop}
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        artifact = _artifact(model, target, task, trust_remote_code, Path(tmp))
        spec = method_spec(method, target, rotated=is_rotated(artifact.meta), **overrides)
        result = run_compress(artifact, spec, target, out, **options)
    meta = result.meta
    if as_json:
        emit_json({"output": str(result.path), **meta})
        return
    for warning in meta.get("warnings", []):
        note(f"warning: {warning}")
    check = meta.get("check", {})
    nodes = meta.get("nodes", {})
    speed = meta.get("speed", {}).get("cases", {})
    rows = [
        ("output", str(result.path)),
        ("method", meta["method"]),
        ("size MB", f"{meta['size_mb_before']:.1f} → {meta['size_mb']:.1f} ({meta['size_ratio']:.2f}×)"),
        ("nodes", ", ".join(f"{k} {v}" for k, v in nodes.get("counts", {}).items())),
        *[(k, check[k]) for k in ("top1_agreement", "kld_mean", "cosine_mean", "agreement") if k in check],
        *[(f"speed {case} vs fp32", f"{c['speedup']:.2f}×") for case, c in speed.items()],
        ("time s", meta.get("timings_s", {}).get("total")),
        ("peak RSS MB", meta.get("peak_rss_mb")),
    ]
    echo(table(rows, ["compress", "value"]))


def _artifact(model: str, target: Target, task: str | None, trust_remote_code: bool, tmp: Path) -> OnnxArtifact:
    """An exported folder is used as is; anything else is a SOURCE, exported into `tmp` first."""
    from edgekit.artifact import MODEL_FILE, OnnxArtifact

    path = Path(model)
    if path.is_dir() and (path / MODEL_FILE).is_file() and ((path / "export.json").is_file()
                                                           or (path / "compress.json").is_file()):
        return OnnxArtifact.load(path)
    from edgekit.export import export
    from edgekit.source import load_source

    src = load_source(model, task=task, trust_remote_code=trust_remote_code)
    note(f"exporting {model} first")
    return export(src, target, tmp / "export")

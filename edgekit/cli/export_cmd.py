"""`edgekit export SOURCE --target T -o DIR`."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.options import common_options, echo, emit_json, table
from edgekit.kinds import ROTATE_MODES


@click.command()
@click.argument("source")
@click.option("--target", "-t", "target_name", required=True, help="Target name or YAML path (e.g. x86-avx2).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--task", default=None, help="Force the task: text-generation, text-classification, feature-extraction.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the target's).")
@click.option("--graph", type=click.Choice(["auto", "fused", "optimum"]), default=None,
              help="Decoder graph writer: fused (GroupQueryAttention, Llama/Mistral/Qwen2/Gemma-3), optimum, or auto "
                   "(default: the target's, auto).")
@click.option("--rotate", type=click.Choice(ROTATE_MODES), default=None,
              help="QuaRot-style rotation in the fused graph, exact in float: residual, heads (+ value/o_proj "
                   "Hadamard), full (+ online Hadamard before down_proj); default: the target's, off.")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX vs PyTorch parity check (not recommended).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint to run.")
@common_options
def export(source: str, target_name: str, out: Path, task: str | None, opset: int | None, graph: str | None,
           rotate: str | None, no_parity: bool, trust_remote_code: bool, as_json: bool) -> None:
    """Export SOURCE to ONNX for a target, optimize it, and check parity against PyTorch."""
    from edgekit.catalog import load_target
    from edgekit.export import export as run_export
    from edgekit.source import load_source

    target = load_target(target_name)
    src = load_source(source, task=task, trust_remote_code=trust_remote_code)
    artifact = run_export(src, target, out, opset=opset, parity=not no_parity, graph=graph, rotate=rotate)
    meta = artifact.meta
    if as_json:
        emit_json({"output": str(artifact.path), **meta})
        return
    parity = meta.get("parity") or {}
    rows = [
        ("output", str(artifact.path)),
        ("task", artifact.task),
        ("size MB", f"{artifact.size_mb:.1f}"),
        ("KV cache", "yes" if meta.get("with_past") else "no"),
        ("graph", _graph_line(meta)),
        ("rotation", _rotation_line(meta)),
        ("parity max |diff|", parity.get("max_abs_diff")),
        ("parity top-1", parity.get("top1_agreement")),
        ("time s", meta.get("timings_s", {}).get("total")),
        ("peak RSS MB", meta.get("peak_rss_mb")),
    ]
    echo(table(rows, ["export", "value"]))


def _graph_line(meta: dict[str, object]) -> str:
    graph = meta.get("graph") or {}
    opt = meta.get("optimization") or {}
    assert isinstance(graph, dict) and isinstance(opt, dict)
    if graph.get("writer") == "edgekit.fused":
        return f"fused writer, {graph.get('nodes')} nodes ({graph.get('attention')})"
    return f"optimum, {opt.get('shipped', 'raw')} ({', '.join(opt.get('fused_ops', {})) or 'no fusions'})"


def _rotation_line(meta: dict[str, object]) -> str:
    rot = meta.get("rotation") or {"mode": "off"}
    assert isinstance(rot, dict)
    if rot.get("mode", "off") == "off":
        return "off"
    return f"{rot['mode']} ({rot.get('basis')}, seed {rot.get('seed')})"

"""`edgekit distill SOURCE -o DIR`: train a smaller student from SOURCE with knowledge distillation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.cli.options import common_options, echo, emit_json, note, table


@click.command()
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output HF folder.")
@click.option("--student-layers", type=int, default=None, help="Keep N evenly spaced layers (first and last included).")
@click.option("--keep-every", type=int, default=None, help="Keep every K-th layer (0, K, 2K, …) and the last one.")
@click.option("--width-ratio", type=float, default=None, help="Keep this fraction of the MLP width (by importance).")
@click.option("--data", "data", multiple=True, type=click.Path(path_type=Path),
              help="Training text file, one sample per line (repeatable). Default: the Lee background corpus.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default 200).")
@click.option("--batch-size", type=int, default=None, help="Sequences per step and process (default 4).")
@click.option("--seq-len", type=int, default=None, help="Tokens per sequence (default 128).")
@click.option("--lr", type=float, default=None, help="Peak learning rate, cosine schedule (default 1e-4).")
@click.option("--temperature", type=float, default=None, help="KD softmax temperature (default 2).")
@click.option("--kd-ratio", type=float, default=None, help="Weight of the KD loss vs cross-entropy (default 0.5).")
@click.option("--hidden-weight", type=float, default=None, help="Encoders: weight of the per-token hidden cosine loss.")
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N steps into OUT.checkpoints/ (0: off).")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint in OUT.checkpoints/.")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--task", default=None, help="Force the task: text-generation, text-classification, feature-extraction.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint to run.")
@common_options
def distill(source: str, out: Path, task: str | None, trust_remote_code: bool, as_json: bool, **options: Any) -> None:
    """Distill SOURCE into a smaller student (an HF folder that is a valid SOURCE for export/compress/bench)."""
    from edgekit.distill import distill as run_distill
    from edgekit.distill import load_spec
    from edgekit.source import load_source

    spec = load_spec(**options)
    src = load_source(source, task=task, trust_remote_code=trust_remote_code)
    student = run_distill(src, spec, out)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one report is enough
        return
    record = json.loads((student.path / "distill.json").read_text())
    if as_json:
        emit_json({"output": str(student.path), **record})
        return
    held = record["held_out"]
    s = record["student"]
    rows = [
        ("output", str(student.path)),
        ("student layers", f"{s['num_layers']} {s['layers']}"),
        ("parameters", f"{s['parameters']:,} ({s['parameter_ratio']:.0%} of teacher)"),
        ("steps", record["steps"]),
        ("final losses", " ".join(f"{k} {v:.4g}" for k, v in record["final_losses"].items())),
        (f"held-out {held['metric']} before", held["before"]),
        (f"held-out {held['metric']} after", held["after"]),
        ("tokens/s", record["tokens_per_s"]),
        ("time s", record["time_s"]),
    ]
    echo(table(rows, ["distill", "value"]))
    if held["metric"] == "kl_mean" and held["after"] >= held["before"]:
        note("warning: training did not lower the KL to the teacher; try more --steps or another --lr")

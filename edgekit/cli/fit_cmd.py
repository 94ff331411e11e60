"""`edgekit fit SOURCE --profile P -o OUT`: the cheapest variant that passes, and why the others did not."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.inspect_cmd import allow_implausible_option
from edgekit.cli.options import common_options, echo, emit_json, table


@click.command()
@click.argument("source")
@click.option("--profile", "-p", "profile_name", required=True, help="Profile name or YAML path.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
@click.option("--methods", default=None, help="Comma-separated methods to consider (default: all the target supports).")
@click.option("--max-candidates", type=click.IntRange(1), default=12, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.1), default=60.0, show_default=True, help="Minutes.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel candidates (they share the CPU: latency figures get noisier).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out text, one sample a line.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration text, one sample a line (default: the built-in corpus's calibration half).")
@click.option("--eval-tokens", type=click.IntRange(16), default=None, help="Tokens of eval text per candidate.")
@click.option("--max-time", type=click.FloatRange(0.5), default=None, help="Seconds per latency measurement.")
@allow_implausible_option
@common_options
def fit(source: str, profile_name: str, out: Path, methods: str | None, max_candidates: int, time_budget: float,
        workers: int, eval_data: Path | None, calibration: Path | None, eval_tokens: int | None, max_time: float | None,
        allow_implausible_source: bool,
        as_json: bool) -> None:
    """Find the smallest variant of SOURCE that passes the profile; exit 1 with the nearest miss if none does."""
    from edgekit.catalog import load_profile
    from edgekit.cli.build_cmd import rebuild_command
    from edgekit.errors import GateFailed
    from edgekit.fit import fit as run_fit

    profile = load_profile(profile_name)
    bench_opts = {k: v for k, v in (("eval_tokens", eval_tokens), ("max_time_s", max_time), ("eval_data", eval_data))
                  if v is not None}
    method_list = [m.strip() for m in methods.split(",")] if methods else None
    result = run_fit(source, profile, out, methods=method_list, max_candidates=max_candidates,
                     time_budget_min=time_budget, workers=workers, bench_options=bench_opts,
                     calibration=calibration, command=rebuild_command(), allow_implausible_source=allow_implausible_source)
    if as_json:
        emit_json({"bundle": str(result.bundle) if result.bundle else None, "passed": result.passed,
                   "chosen": result.chosen.candidate.label if result.chosen else None,
                   "candidates": [o.to_dict() for o in result.outcomes]})
    else:
        rows = [(o.candidate.label, o.status, o.estimate.get("size_mb"), o.figures.get("size_mb"),
                 o.figures.get("decode_tokens_per_s"), o.figures.get("top1_agreement") or o.figures.get("cosine_mean"),
                 o.reason[:70]) for o in result.outcomes]
        echo(table(rows, ["candidate", "status", "est MB", "MB", "tok/s", "fidelity", "reason"]))
        if result.chosen:
            echo(f"\nchosen: {result.chosen.candidate.label} → {result.bundle}")
    if not result.passed:
        near = result.nearest
        detail = f"nearest miss: {near.candidate.label}: {near.reason}" if near else "no candidate could be benched"
        raise GateFailed(f"no variant fits profile '{profile.name}'; {detail}")

"""`edgekit fit SOURCE --profile P [--profile Q ...] -o OUT [--executor local|ray]`: the cheapest variant that
passes, and why the others did not. Several profiles: one bundle each under OUT/<profile>/, sharing the exports
and candidates of a target."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.inspect_cmd import allow_implausible_option
from edgekit.cli.options import common_options, echo, emit_json, table


@click.command()
@click.argument("source")
@click.option("--profile", "-p", "profile_names", required=True, multiple=True,
              help="Profile name or YAML path; repeat for several (then OUT/<profile>/ each).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
@click.option("--methods", default=None, help="Comma-separated methods to consider (default: all the target supports).")
@click.option("--max-candidates", type=click.IntRange(1), default=12, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.1), default=60.0, show_default=True, help="Minutes.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Candidates compressed and checked at once (local pool; a local Ray cluster's CPUs). "
                   "Latency is always timed one at a time, on this host.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where compress + fidelity run: a local process pool, or Ray (pip install 'edgekit[ray]').")
@click.option("--address", default=None, help="Ray cluster address (--executor ray; default: start a local one).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out text, one sample a line.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration text, one sample a line (default: the built-in corpus's calibration half).")
@click.option("--eval-tokens", type=click.IntRange(16), default=None, help="Tokens of eval text per candidate.")
@click.option("--max-time", type=click.FloatRange(0.5), default=None, help="Seconds per latency measurement.")
@allow_implausible_option
@common_options
def fit(source: str, profile_names: tuple[str, ...], out: Path, methods: str | None, max_candidates: int,
        time_budget: float, workers: int, executor: str, address: str | None, eval_data: Path | None,
        calibration: Path | None, eval_tokens: int | None, max_time: float | None, allow_implausible_source: bool,
        as_json: bool) -> None:
    """Find the smallest variant of SOURCE that passes each profile; exit 1 with the nearest miss if one has none."""
    from edgekit.catalog import load_profile
    from edgekit.cli.build_cmd import rebuild_command
    from edgekit.errors import GateFailed
    from edgekit.fit.executors import ExecutorSpec
    from edgekit.fit.run import FitOptions, fit_profiles

    profiles = [load_profile(name) for name in profile_names]
    bench_opts = {k: v for k, v in (("eval_tokens", eval_tokens), ("max_time_s", max_time), ("eval_data", eval_data))
                  if v is not None}
    opts = FitOptions(methods=[m.strip() for m in methods.split(",")] if methods else None,
                      max_candidates=max_candidates, time_budget_min=time_budget,
                      executor=ExecutorSpec(executor, workers, address), bench_options=bench_opts,
                      calibration=calibration, command=rebuild_command(), allow_implausible_source=allow_implausible_source)
    results = fit_profiles(source, profiles, out, opts)
    if as_json:
        one = [{"profile": r.profile, "bundle": str(r.bundle) if r.bundle else None, "passed": r.passed,
                "chosen": r.chosen.candidate.label if r.chosen else None,
                "candidates": [o.to_dict() for o in r.outcomes]} for r in results]
        emit_json(one[0] if len(one) == 1 else {"results": one})
    else:
        for r in results:
            rows = [(o.candidate.label, o.status, o.estimate.get("size_mb"), o.figures.get("size_mb"),
                     o.figures.get("decode_tokens_per_s"), o.figures.get("top1_agreement") or o.figures.get("cosine_mean"),
                     o.reason[:70]) for o in r.outcomes]
            echo(("" if len(results) == 1 else f"\nprofile {r.profile}\n")
                 + table(rows, ["candidate", "status", "est MB", "MB", "tok/s", "fidelity", "reason"]))
            if r.chosen:
                echo(f"\nchosen: {r.chosen.candidate.label} → {r.bundle}")
    misses = [r for r in results if not r.passed]
    if misses:
        near = misses[0].nearest
        detail = f"nearest miss: {near.candidate.label}: {near.reason}" if near else "no candidate could be benched"
        raise GateFailed(f"no variant fits profile '{misses[0].profile}'; {detail}")

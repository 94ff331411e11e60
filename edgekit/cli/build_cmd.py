"""`edgekit build SOURCE --profile P -o OUT`: the whole pipeline; exit 0 only if the bundle fits."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgekit.cli.inspect_cmd import allow_implausible_option, sanity_line
from edgekit.cli.options import common_options, echo, emit_json, table
from edgekit.kinds import ROTATE_MODES
from edgekit.records import Report
from edgekit.specs import METHODS


def rebuild_command() -> str:
    return " ".join(["edgekit", *(shlex.quote(a) for a in sys.argv[1:])])


@click.command()
@click.argument("source")
@click.option("--profile", "-p", "profile_name", required=True, help="Profile name or YAML path.")
@click.option("--method", "-m", type=click.Choice(METHODS), default=None, help="Default: the profile's.")
@click.option("--then", "then", type=click.Choice([m for m in METHODS if m != "distill"]), default=None,
              help="With --method distill: quantize the student with this method.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out text, one sample a line.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration text, one sample a line (default: the built-in corpus's calibration half).")
@click.option("--eval-tokens", type=click.IntRange(16), default=None, help="Tokens of eval text for fidelity.")
@click.option("--max-time", type=click.FloatRange(0.5), default=None, help="Seconds per latency measurement.")
@click.option("--distill-steps", type=click.IntRange(1), default=None, help="With --method distill.")
@click.option("--student-layers", type=click.IntRange(1), default=None, help="With --method distill.")
@click.option("--archive", is_flag=True, help="Also write OUT.tar.gz.")
@click.option("--rotate", type=click.Choice(ROTATE_MODES), default=None,
              help="QuaRot-style rotation in the fused export (default: the target's, off); see docs/rotation.md.")
@click.option("--keep-work", is_flag=True, help="Keep intermediate export/compress folders.")
@click.option("--trust-remote-code", is_flag=True)
@allow_implausible_option
@common_options
def build(source: str, profile_name: str, method: str | None, then: str | None, out: Path, eval_data: Path | None,
          calibration: Path | None, eval_tokens: int | None, max_time: float | None, distill_steps: int | None,
          student_layers: int | None, archive: bool, rotate: str | None, keep_work: bool, trust_remote_code: bool,
          allow_implausible_source: bool, as_json: bool) -> None:
    """Source → export → compress → bench → gate → bundle."""
    from edgekit.catalog import load_profile
    from edgekit.cli.gate_cmd import finish_gate, print_gate
    from edgekit.pipeline import BuildOptions
    from edgekit.pipeline import build as run_build

    profile = load_profile(profile_name)
    bench_opts = {k: v for k, v in (("eval_tokens", eval_tokens), ("max_time_s", max_time)) if v is not None}
    distill_opts = {k: v for k, v in (("steps", distill_steps), ("student_layers", student_layers)) if v is not None}
    options = BuildOptions(method=method, then=then, eval_data=eval_data, calibration=calibration, archive=archive,
                           keep_work=keep_work,
                           trust_remote_code=trust_remote_code, command=rebuild_command(), bench=bench_opts,
                           distill=distill_opts, allow_implausible_source=allow_implausible_source, rotate=rotate)
    result = run_build(source, profile, out, options)
    if as_json:
        emit_json({"bundle": str(result.bundle), "passed": result.passed, "gate": result.gate.to_dict(),
                   "stages": result.stages})
    else:
        echo(table([(s["stage"], s["seconds"], s.get("peak_rss_mb"), s.get("children_peak_rss_mb"))
                    for s in result.stages], ["stage", "seconds", "peak RSS MB", "subprocess peak RSS MB"]))
        echo()
        sanity = Report(result.report).sanity
        if sanity:
            echo(sanity_line(sanity))
        print_gate(result.gate)
        if "distill" in result.report:
            d = result.report["distill"]
            echo(f"distilled student: {d.get('size_ratio')}x the teacher's size, PPL retention {d.get('ppl_retention')}, "
                 f"top-1 agreement {d.get('agreement_retention')} (vs the teacher)")
        mark = "" if result.passed else " — marked FAILED (gate.json, edgekit.json gate_passed: false)"
        echo(f"bundle: {result.bundle}{' (+ .tar.gz)' if archive else ''}{mark}")
    finish_gate(result.gate)

"""`edgekit gate REPORT --profile P`: exit 0 if the report fits the profile, 1 if not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.options import common_options, echo, emit_json
from edgekit.util import write_atomic

if TYPE_CHECKING:
    from edgekit.gate import GateResult


def read_json(path: Path, what: str) -> dict[str, Any]:
    from edgekit.errors import InputError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not an edgekit {what} (top level is not an object)")
    return data


def default_gate_json(report: Path) -> Path | None:
    """gate.json beside REPORT, except inside a bundle: its files are hashed, and rewriting one would make
    `edgekit verify` fail on the step a CI job runs right after gating. There only an explicit -o writes."""
    folder = Path(report).parent
    return None if (folder / "edgekit.json").is_file() else folder / "gate.json"


def print_gate(result: GateResult) -> None:
    """The rule table, failing rules first, with how far off each one is."""
    from edgekit.cli.options import table

    rows = []
    for r in result.ordered():
        value = r.status if r.value is None else f"{r.value:.4g}{' ' + r.unit if r.unit else ''}{' (est.)' if r.estimated else ''}"
        op = "<=" if r.kind == "max" else ">="
        margin = "" if r.margin is None else f"{r.margin:+.4g} ({r.margin_pct:+.1f}%)"
        rows.append((r.status + (" ?" if r.uncertain else ""), r.name, value, f"{op} {r.threshold:.4g}", margin))
    echo(table(rows, ["status", "rule", "value", "threshold", "margin"]))
    verdict = "PASSED" if result.passed else f"FAILED: {', '.join(r.name for r in result.failed)}"
    notes = []
    if any(r.estimated for r in result.rules):
        notes.append("(est.) = device figure estimated from a roofline, not measured on the device")
    if any(r.uncertain for r in result.rules):
        notes.append("? = the interval (fidelity 95 % CI, or the estimate's device-efficiency range) straddles the "
                     + ("threshold; --strict fails it" if result.strict else "threshold; gated on the point value (--strict fails it)"))
    echo("\n".join(["", *notes, f"gate {result.profile}: {verdict}"]))


def finish_gate(result: GateResult) -> None:
    from edgekit.errors import GateFailed

    if not result.passed:
        worst = next(r for r in result.ordered() if r.passed is False)  # the first row of the printed table
        raise GateFailed(f"gate failed for profile '{result.profile}': {worst.describe()}"
                         + (f" (+{len(result.failed) - 1} more)" if len(result.failed) > 1 else ""))


@click.command()
@click.argument("report", type=click.Path(path_type=Path))
@click.option("--profile", "-p", "profile_name", required=True, help="Profile name or YAML path.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="An earlier report: adds regression rules.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML (one testcase per rule).")
@click.option("--markdown", type=click.Path(path_type=Path), default=None, help="Write a Markdown summary (PR comments).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="gate.json path (default: beside REPORT, but never inside a bundle).")
@click.option("--strict", is_flag=True, help="Fail rules whose interval straddles the threshold (shown as ?).")
@common_options
def gate(report: Path, profile_name: str, baseline: Path | None, junit: Path | None, markdown: Path | None,
         out: Path | None, strict: bool, as_json: bool) -> None:
    """Check REPORT against a profile's budgets and fidelity floors; exit 1 if it does not fit."""
    from edgekit.catalog import load_profile
    from edgekit.gate import gate as run_gate

    profile = load_profile(profile_name)
    result = run_gate(read_json(report, "report"), profile, read_json(baseline, "baseline report") if baseline else None,
                      strict=strict)
    gate_json = out or default_gate_json(report)
    outputs = {gate_json: json.dumps(result.to_dict(), indent=2) + "\n"} if gate_json else {}
    if junit:
        outputs[junit] = result.junit_xml()
    if markdown:
        outputs[markdown] = result.markdown()
    for path, text in outputs.items():
        write_atomic(path, text)
    if as_json:
        emit_json(result.to_dict())
    else:
        print_gate(result)
    finish_gate(result)

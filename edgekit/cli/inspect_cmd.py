"""`edgekit inspect SOURCE`: the source-integrity stage on its own (exit 0 plausible, 2 not), and its shared flag."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgekit.cli.options import common_options, echo, emit_json, table

F = TypeVar("F", bound=Callable[..., Any])
ENVVAR = "EDGEKIT_ALLOW_IMPLAUSIBLE_SOURCE"


def allow_implausible_option(func: F) -> F:
    """--allow-implausible-source on build, fit and bench: failed source checks are recorded, not fatal."""
    return click.option(
        "--allow-implausible-source",
        "allow_implausible_source",
        is_flag=True,
        envvar=ENVVAR,
        help="Build even when a source check fails (e.g. a random-weight test model); recorded in "
        f"report.json source.sanity and the bundle manifest. Env: {ENVVAR}=1.",
    )(func)


def sanity_line(sanity: dict[str, Any]) -> str:
    """One line of the source stage's figures for the build summary."""
    f = sanity.get("figures") or {}
    parts = [f"{f['bytes_per_token']} bytes/token"]
    if "bits_per_byte" in f:
        parts.append(
            f"{f['bits_per_byte']} bits/byte (text's byte entropy {f['byte_entropy_baseline']}), PPL {f['ppl']}"
        )
    probes = next((c["value"] for c in sanity.get("checks", []) if c["name"] == "tokenizer.probes"), None)
    if probes:
        parts.append(f"tokenizer probes {probes}")
    state = (
        "ok"
        if sanity.get("passed")
        else f"FAILED {', '.join(sanity.get('failed') or [])} (allowed by {sanity.get('override')})"
    )
    return f"source checks {state}: " + "; ".join(parts)


@click.command()
@click.argument("source")
@click.option(
    "--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out text, one sample a line."
)
@click.option(
    "--eval-tokens",
    type=click.IntRange(16),
    default=512,
    show_default=True,
    help="Tokens of eval text for bytes per token and the source's own PPL.",
)
@click.option("--task", default=None, help="Force the task (text-generation, text-classification, ...).")
@click.option("--trust-remote-code", is_flag=True)
@common_options
def inspect(
    source: str,
    eval_data: Path | None,
    eval_tokens: int,
    task: str | None,
    trust_remote_code: bool,
    as_json: bool,
) -> None:
    """Check SOURCE before building from it: tokenizer equivalence (GGUF), round trip, bytes/token, own PPL."""
    from edgekit.errors import SourceCheckFailed
    from edgekit.source import load_source
    from edgekit.source.integrity import Check, check_source

    src = load_source(source, task=task, trust_remote_code=trust_remote_code)
    # Every check runs (allow_implausible): the user sees all figures, and the exit code still says no.
    record = check_source(src, eval_data=eval_data, allow_implausible=True, eval_tokens=eval_tokens)
    record["override"] = None
    if as_json:
        emit_json({"source": src.fingerprint, "sanity": record})
    else:
        rows = [
            (c["name"], "ok" if c["passed"] else "FAILED", c["value"], c["limit"], c["detail"][:60])
            for c in record["checks"]
        ]
        echo(table(rows, ["check", "result", "value", "expected", "detail"]))
        tok = record.get("tokenizer") or {}
        if tok:
            echo(f"\ntokenizer.json sha256 {tok['sha256'][:16]}…, built by {tok['built_by']}")
    if not record["passed"]:
        first = next(c for c in record["checks"] if not c["passed"])
        raise SourceCheckFailed(Check(**first).describe(), hint="this source would not be built")

"""Options every command shares, and the one place that prints: human tables or --json."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def common_options(func: F) -> F:
    """--json, -v/-q on every command; sets logging and the progress display before the command runs."""

    @click.option("--json", "as_json", is_flag=True, help="Machine output on stdout, nothing else there.")
    @click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, verbose: int, quiet: bool, **kwargs: Any) -> Any:
        from edgekit import progress
        from edgekit.cli import _setup_logging

        _setup_logging(-1 if quiet else verbose)
        progress.set_display(progress.auto_display() if not (as_json or quiet) else None)
        return func(*args, as_json=as_json, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def echo(text: str = "") -> None:
    click.echo(text)


def note(text: str) -> None:
    """Human chatter goes to stderr so stdout stays clean for pipes."""
    click.echo(text, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()

"""Assertions every reliability case makes: exit code, one actionable line, no traceback, nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_clean_failure(res: subprocess.CompletedProcess[str], code: int, *words: str, out: Path | None = None) -> None:
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    error_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("edgekit: ")]
    assert len(error_lines) == 1, res.stderr
    for word in words:
        assert word.lower() in error_lines[0].lower(), f"{word!r} not in {error_lines[0]!r}"
    if out is not None:
        assert not out.exists(), f"{out} was left behind"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"temporary folders left behind: {leftovers}"

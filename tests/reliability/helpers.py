"""Assertions every reliability case makes: exit code, one actionable line, no traceback, nothing left behind."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


class Spawned:
    """The real CLI in a subprocess, its stderr read as it comes, so a test can act on a state the run reports
    (a progress line, a file) instead of guessing with sleep()."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        import os
        import sys
        import threading

        full_env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
        full_env.update({"EDGEKIT_PROGRESS_INTERVAL": "1", **(env or {})})
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd)
        self.lines: list[str] = []
        self.out: list[str] = []
        # Both pipes are drained by threads: a killed run's children may hold them open long after it died.
        self._readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stderr, self.lines), (self.proc.stdout, self.out))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
        """Return once `ready()` holds; fail if the process ends first or the state never comes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"process ended (exit {self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.stderr}")
            time.sleep(0.02)

    def wait_for_line(self, text: str, timeout: float = 300) -> None:
        self.wait_until(lambda: any(text in ln for ln in self.lines), f"a stderr line with {text!r}", timeout)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.proc.returncode, "".join(self.out), self.stderr

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

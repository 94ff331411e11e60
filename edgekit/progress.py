"""Progress events from the library, rendered by the CLI (the library never prints).

Library code wraps long work in `with progress.stage("export", total=n) as st: st.advance()`.
Nothing is shown unless the CLI installed a display (a terminal, no --json); stage timings are
recorded either way so pipelines can report them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class Display(Protocol):
    def start(self, name: str, total: float | None) -> None: ...
    def update(self, name: str, done: float, total: float | None, info: str) -> None: ...
    def finish(self, name: str, seconds: float, ok: bool) -> None: ...


@dataclass
class Stage:
    name: str
    total: float | None
    display: Display | None
    done: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    info: str = ""

    def advance(self, n: float = 1.0, info: str | None = None) -> None:
        self.done += n
        if info is not None:
            self.info = info
        if self.display is not None:
            self.display.update(self.name, self.done, self.total, self.info)

    def set_info(self, info: str) -> None:
        self.info = info
        if self.display is not None:
            self.display.update(self.name, self.done, self.total, self.info)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


_display: Display | None = None


def set_display(display: Display | None) -> None:
    global _display
    _display = display


@contextlib.contextmanager
def stage(name: str, total: float | None = None) -> Iterator[Stage]:
    st = Stage(name, total, _display)
    if _display is not None:
        _display.start(name, total)
    ok = False
    try:
        yield st
        ok = True
    finally:
        if _display is not None:
            _display.finish(name, st.elapsed, ok)


class TerminalDisplay:
    """One status line per stage on stderr: name, percent, elapsed and ETA; a ✓/✗ line when done."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.starts: dict[str, float] = {}
        self._last = 0.0

    def start(self, name: str, total: float | None) -> None:
        self.starts[name] = time.perf_counter()
        self._write(f"{name} ...")

    def update(self, name: str, done: float, total: float | None, info: str) -> None:
        now = time.perf_counter()
        if now - self._last < 0.1:
            return
        self._last = now
        elapsed = now - self.starts.get(name, now)
        if total:
            frac = min(done / total, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
            text = f"{name} {frac * 100:5.1f}% {_hms(elapsed)} elapsed, ETA {_hms(eta)}"
        else:
            text = f"{name} {_hms(elapsed)} elapsed"
        self._write(f"{text} {info}".rstrip())

    def finish(self, name: str, seconds: float, ok: bool) -> None:
        mark = "done" if ok else "FAILED"
        self._write(f"{name} {mark} in {_hms(seconds)}", end="\n")

    def _write(self, text: str, end: str = "") -> None:
        self.stream.write("\r\033[K" + text + end)
        self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def terminal_display() -> Display | None:
    """A display only when stderr is a terminal: piped or CI output stays quiet."""
    return TerminalDisplay() if sys.stderr.isatty() else None

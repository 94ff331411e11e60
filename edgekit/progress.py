"""Progress events from the library, rendered by the CLI (the library never prints).

Library code wraps long work in `with progress.stage("export", total=n) as st: st.advance()`.
Nothing is shown unless the CLI installed a display: tqdm bars on a terminal, periodic plain lines in a
log (CI), nothing with --json or -q; stage timings are recorded either way so pipelines can report them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from typing import TextIO


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

    def expect(self, seconds: float) -> None:
        """How long this stage took last time: an ETA for work that reports no steps (an export, a quantizer)."""
        hook = getattr(self.display, "expect", None)  # optional in the Display protocol
        if hook is not None:
            hook(self.name, seconds)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


_display: Display | None = None


def set_display(display: Display | None) -> None:
    global _display
    _display = display


def current_display() -> Display | None:
    return _display


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


@dataclass
class ActiveStage:
    name: str
    total: float | None
    started: float = field(default_factory=time.perf_counter)
    done: float = 0.0
    info: str = ""
    bar: Any = None
    expected: float | None = None

    def line(self) -> str:
        """tqdm's own meter text: percent, elapsed, ETA (from the last run's time when the work reports no steps)."""
        from tqdm import tqdm

        elapsed = time.perf_counter() - self.started
        if (not self.total or self.done > self.total) and self.expected:
            left = tqdm.format_interval(max(self.expected - elapsed, 0.0))
            text = (f"{self.name}: {min(elapsed / self.expected, 0.99):.0%} {tqdm.format_interval(elapsed)} elapsed, "
                    f"ETA {left} (from the last build)")
        elif not self.total or self.done > self.total:
            text = f"{self.name}: {tqdm.format_interval(elapsed)} elapsed, ETA unknown"
        else:
            text = tqdm.format_meter(self.done, self.total, elapsed, prefix=self.name, ascii=True, ncols=100)
        return f"{text} {self.info}".rstrip()


class TerminalDisplay:
    """A tqdm bar per stage on stderr (percent, elapsed, ETA); nested stages stack below their parent."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.active: dict[str, ActiveStage] = {}

    def start(self, name: str, total: float | None) -> None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=name, file=self.stream, leave=False, position=len(self.active),
                   bar_format=None if total else "{desc} {elapsed} elapsed {postfix}", dynamic_ncols=True)
        self.active[name] = ActiveStage(name, total, bar=bar)

    def update(self, name: str, done: float, total: float | None, info: str) -> None:
        act = self.active.get(name)
        if act is None:
            return
        act.bar.update(done - act.bar.n)
        if info != act.info:
            act.info = info
            act.bar.set_postfix_str(info, refresh=False)
        act.bar.refresh()

    def finish(self, name: str, seconds: float, ok: bool) -> None:
        act = self.active.pop(name, None)
        if act is not None:
            act.bar.close()
        if not self.active:  # only whole stages get a line that stays
            self.stream.write(f"{name} {'done' if ok else 'FAILED'} in {_hms(seconds)}\n")
            self.stream.flush()


class LogDisplay:
    """Plain lines for logs that are not a terminal (CI): a line when a stage starts and ends, and a heartbeat
    every `interval` seconds naming the stages under way with elapsed time and ETA, from a timer thread, so a
    long C call (an export, a quantizer) never looks hung."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.active: dict[str, ActiveStage] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, name: str, total: float | None) -> None:
        with self._lock:
            self.active[name] = ActiveStage(name, total)
            self._write(f"{name}: started")
            if self._thread is None:  # a daemon: it never holds up the interpreter's exit
                self._thread = threading.Thread(target=self._beat, name="edgekit-progress", daemon=True)
                self._thread.start()

    def update(self, name: str, done: float, total: float | None, info: str) -> None:
        with self._lock:
            act = self.active.get(name)
            if act is not None:
                act.done, act.total, act.info = done, total, info

    def expect(self, name: str, seconds: float) -> None:
        with self._lock:
            act = self.active.get(name)
            if act is not None and seconds > 0:
                act.expected = seconds

    def finish(self, name: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self.active.pop(name, None)
            self._write(f"{name}: {'done' if ok else 'FAILED'} in {_hms(seconds)}")

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                for act in self.active.values():
                    if time.perf_counter() - act.started >= self.interval:
                        self._write(act.line())

    def _write(self, text: str) -> None:
        self.stream.write(f"[progress] {text}\n")
        self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def auto_display() -> Display:
    """tqdm bars on a terminal; periodic plain lines otherwise (EDGEKIT_PROGRESS_INTERVAL seconds, default 30)."""
    if sys.stderr.isatty():
        return TerminalDisplay()
    try:
        interval = float(os.environ.get("EDGEKIT_PROGRESS_INTERVAL", "30"))
    except ValueError:
        interval = 30.0
    return LogDisplay(interval=max(interval, 0.05))

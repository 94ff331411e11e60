"""Stage workers (edgekit.stageproc): results, errors, progress and logs come back as if the stage ran here."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgekit import progress
from edgekit.errors import GateFailed, InputError
from edgekit.stageproc import UNWIND_S, RemoteTraceback, StageProcess


def _work(n: int) -> dict[str, Any]:
    log = logging.getLogger("edgekit.test_worker")
    with progress.stage("worker step", total=n) as st:
        for _ in range(n):
            st.advance()
    log.warning("worked %d", n)
    return {"pid": os.getpid(), "n": n}


def _fail(kind: str) -> None:
    if kind == "input":
        raise InputError("bad path", hint="give another")
    if kind == "gate":
        raise GateFailed("a rule failed")
    if kind == "os":
        raise PermissionError(13, "Permission denied", "/nowhere")
    os.kill(os.getpid(), signal.SIGKILL)  # an OOM kill, as the kernel does it


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def start(self, name: str, total: float | None) -> None:
        self.events.append(("start", name))

    def update(self, name: str, done: float, total: float | None, info: str) -> None:
        self.events.append(("update", name))

    def finish(self, name: str, seconds: float, ok: bool) -> None:
        self.events.append(("finish", name))


def test_result_progress_and_logs_come_back(caplog: pytest.LogCaptureFixture) -> None:
    display = _Recorder()
    progress.set_display(display)
    try:
        with caplog.at_level(logging.WARNING), StageProcess() as worker:
            first, second = worker.call(_work, 2), worker.call(_work, n=1)
    finally:
        progress.set_display(None)
    assert first["pid"] == second["pid"] != os.getpid()  # one worker for both calls, not this process
    assert first["n"] == 2 and worker.last_peak_mb > 0
    assert display.events[:4] == [("start", "worker step"), ("update", "worker step"), ("update", "worker step"),
                                  ("finish", "worker step")]
    assert [r.getMessage() for r in caplog.records if r.name == "edgekit.test_worker"] == ["worked 2", "worked 1"]


@pytest.mark.parametrize(("kind", "cls", "code"), [("input", InputError, 2), ("gate", GateFailed, 1),
                                                   ("os", PermissionError, None)])
def test_errors_keep_their_class(kind: str, cls: type[Exception], code: int | None) -> None:
    with StageProcess() as worker, pytest.raises(cls) as info:
        worker.call(_fail, kind)
    assert isinstance(info.value.__cause__, RemoteTraceback) and "_fail" in str(info.value.__cause__)
    if code is not None:
        assert info.value.exit_code == code  # type: ignore[attr-defined]
        assert info.value.one_line().startswith(("bad path (give another)", "a rule failed"))  # type: ignore[attr-defined]
    else:
        assert info.value.errno == 13 and info.value.filename == "/nowhere"  # type: ignore[attr-defined]


def test_a_killed_worker_fails_at_once() -> None:
    with StageProcess() as worker, pytest.raises(RuntimeError, match="SIGKILL: out of memory"):
        worker.call(_fail, "kill")


def _sleep_then_mark(marker: str) -> None:
    try:
        for _ in range(600):
            time.sleep(0.1)
    except KeyboardInterrupt:
        Path(marker).write_text("unwound")  # a stage's cleanup (temporary folders) runs here
        raise


def test_an_interrupt_unwinds_the_worker_and_returns_once_it_has(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while the stage runs
    # Python's own handler, whatever an earlier in-process CLI test left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        with StageProcess() as worker, pytest.raises(KeyboardInterrupt):
            timer.start()
            worker.call(_sleep_then_mark, str(marker))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert marker.read_text() == "unwound"
    # Back as soon as the worker's reply says it unwound, not after the UNWIND_S a stuck worker gets (a hang check,
    # not a speed goal: the bound is far from the ~1 s it takes).
    assert time.monotonic() - t0 < UNWIND_S / 2

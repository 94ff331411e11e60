"""Build stages in a worker process: a fresh interpreter (multiprocessing "spawn") that imports only what its
stages need and hands all of its memory back to the OS when it exits.

Why: a build's peak RSS is its largest stage's. In one process every stage sat on what the earlier ones left:
~430 MiB of torch/transformers imported by the source check, under a compress stage that never uses torch
(SmolLM2: 1,897 MiB for compress in-process). The build process itself stays light (no torch); each stage's
peak is then the build process's plus its worker's (`_Stages` in edgekit.pipeline adds them).

The worker runs module-level functions sent to it (pickled by reference); its progress events and log records are
forwarded to this process's display and handlers, and an exception it raises is raised here as itself (an
EdgekitError keeps its class and exit code) with the worker's traceback as its __cause__. A worker that dies
(OOM killer) raises RuntimeError here at once; an interrupt here is passed on to the worker, which unwinds its
stage (temporary folders removed) before this process goes on; a worker whose parent dies is killed with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from edgekit import progress
from edgekit.util import peak_rss_mb, release_memory, reset_peak_rss

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from types import TracebackType

log = logging.getLogger(__name__)
T = TypeVar("T")
UNWIND_S = 60.0  # how long an interrupted worker may take to clean up before it is killed
REPLIES = ("ok", "error")  # the kinds of message that end a call; the others are progress and log records


class RemoteTraceback(Exception):
    """The worker's traceback, chained under the exception it raised (as concurrent.futures does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class StageProcess:
    """One worker process for one or more consecutive stages; `call` runs a function there and returns its result.

    `last_peak_mb`: the worker's peak RSS (MiB, its own VmHWM) during the last call, whether it returned or raised.
    `mmap_threshold`: glibc serves blocks from this size (bytes) with their own mappings, returned to the OS when
    freed, instead of from a heap that fragments; None: glibc's default, which raises it up to 32 MiB as large
    blocks are freed. A low one costs torch speed (SmolLM2 forward: ~1.3x slower at 128 KiB), not onnxruntime's:
    its arena allocates once (compress at 128 KiB: 1,414 vs 1,641 MiB peak).
    """

    def __init__(self, *, mmap_threshold: int | None = None) -> None:
        self.mmap_threshold = mmap_threshold
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self.last_peak_mb = 0.0

    def __enter__(self) -> StageProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _start(self) -> Connection:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
                  if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
        levels[""] = logging.getLogger().getEffectiveLevel()
        proc = ctx.Process(target=_worker_main, name="edgekit-stage", daemon=True,
                           args=(theirs, os.getpid(), levels, progress.current_display() is not None, self.mmap_threshold))
        proc.start()
        theirs.close()
        self._proc, self._conn = proc, ours
        return ours

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.last_peak_mb = 0.0
        conn = self._conn or self._start()
        conn.send((fn, args, kwargs))
        try:
            kind, value, text, peak = self._wait(conn)
        except KeyboardInterrupt:
            self._unwind()
            raise
        self.last_peak_mb = peak
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        with contextlib.suppress(AttributeError, TypeError):  # an exception class that refuses a cause
            value.__cause__ = RemoteTraceback(text)
        raise value

    def _wait(self, conn: Connection) -> tuple[str, Any, str, float]:
        from multiprocessing.connection import wait

        proc = self._proc
        assert proc is not None
        while True:
            wait([conn, proc.sentinel])
            try:
                msg = conn.recv() if conn.poll() else None
            except (EOFError, OSError):
                msg = None  # the worker is gone
            if msg is None:
                if not proc.is_alive() or conn.closed:
                    proc.join(5)  # reaped: its exit code says how it ended
                    raise RuntimeError(f"the stage worker process died ({_how(proc.exitcode)})")
                continue
            if msg[0] in REPLIES:
                return msg  # type: ignore[no-any-return]
            _forward(msg)

    def _unwind(self) -> None:
        """Interrupt the worker (SIGTERM, which it turns into KeyboardInterrupt) and let it clean up; then kill it."""
        from multiprocessing.connection import wait

        proc, conn = self._proc, self._conn
        if proc is None or conn is None or not proc.is_alive():
            return
        with contextlib.suppress(OSError):
            os.kill(proc.pid or 0, signal.SIGTERM)
        try:  # drain what it still sends, so it never blocks writing a reply nobody reads
            while proc.is_alive() and wait([conn, proc.sentinel], timeout=UNWIND_S):
                with contextlib.suppress(EOFError, OSError):
                    # Its reply to the interrupted call means it has unwound: it now waits for the next call
                    # (close() ends it), not for another UNWIND_S.
                    if conn.poll() and conn.recv()[0] in REPLIES:
                        break
        finally:
            self.close()

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                if proc is not None and proc.is_alive():
                    conn.send(None)  # "no more stages": it exits, and its memory goes back to the OS
            conn.close()
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"killed by {name}" + (": out of memory?" if exitcode == -signal.SIGKILL else "")
    return f"exit code {exitcode}"


def _forward(msg: tuple[Any, ...]) -> None:
    if msg[0] == "progress":
        display = progress.current_display()
        hook = getattr(display, msg[1], None) if display is not None else None
        if hook is not None:
            hook(*msg[2])
    elif msg[0] == "log":
        record: logging.LogRecord = msg[1]
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class _Sender:
    """Messages to the parent from any thread of the worker (a progress heartbeat, a logging library thread)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, msg: tuple[Any, ...]) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(msg)


class _ForwardDisplay:
    def __init__(self, sender: _Sender) -> None:
        self.sender = sender

    def start(self, name: str, total: float | None) -> None:
        self.sender.send(("progress", "start", (name, total)))

    def update(self, name: str, done: float, total: float | None, info: str) -> None:
        self.sender.send(("progress", "update", (name, done, total, info)))

    def finish(self, name: str, seconds: float, ok: bool) -> None:
        self.sender.send(("progress", "finish", (name, seconds, ok)))

    def expect(self, name: str, seconds: float) -> None:
        self.sender.send(("progress", "expect", (name, seconds)))


class _ForwardHandler(logging.Handler):
    def __init__(self, sender: _Sender) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None  # arguments may not pickle
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            self.sender.send(("log", record))
        except Exception:
            self.handleError(record)


def _worker_main(conn: Connection, parent: int, levels: dict[str, int], display: bool, mmap_threshold: int | None) -> None:
    _die_with_parent(parent)
    if mmap_threshold is not None:
        _set_mmap_threshold(mmap_threshold)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent, which passes it on as SIGTERM
    signal.signal(signal.SIGTERM, _interrupt)
    sys.unraisablehook = _drop_interrupts(sys.unraisablehook)
    sender = _Sender(conn)
    root = logging.getLogger()
    root.handlers = [_ForwardHandler(sender)]
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    progress.set_display(_ForwardDisplay(sender) if display else None)
    code = 0
    try:
        while (job := conn.recv()) is not None:
            sender.send(_run(job))
    except (EOFError, KeyboardInterrupt):
        code = 130
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # torch and onnxruntime take seconds to tear down; every stage has cleaned up by now


def _run(job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> tuple[str, Any, str, float]:
    import pickle

    fn, args, kwargs = job
    release_memory()
    reset_peak_rss()
    try:
        reply: tuple[str, Any, str, float] = ("ok", fn(*args, **kwargs), "", 0.0)
    except BaseException as exc:  # KeyboardInterrupt too: the parent decides what an interrupt means
        reply = ("error", exc, "".join(traceback.format_exception(exc)), 0.0)
    reply = (*reply[:3], peak_rss_mb())
    try:
        pickle.dumps(reply)
    except Exception as exc:
        what = f"{type(reply[1]).__name__}: {reply[1]}" if reply[0] == "error" else "its result"
        return ("error", RuntimeError(f"the stage worker could not send back {what} ({exc})"), reply[2], reply[3])
    return reply


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drop_interrupts(hook: Callable[[Any], object]) -> Callable[[Any], None]:
    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)

    return unraisable


def _set_mmap_threshold(nbytes: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD; fixing it stops glibc raising it


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the build process dies (a SIGKILL leaves no orphan computing on)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)

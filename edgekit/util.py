"""Small shared helpers: atomic file and folder writes, the cache location, peak RSS."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import InputError

# OS errors that come from the user's environment (full disk, read-only or forbidden path), not from a bug.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE})


def is_user_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEKIT_CACHE", "~/.cache/edgekit")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it into place only if the block completes.

    A crash or Ctrl-C leaves only a `.<name>.tmp-*` folder that never looks like a result; the previous
    `final`, if any, stays untouched until the new one is complete.
    """
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write to {parent}: {exc.strerror}") from exc
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise InputError(f"{final} already exists")
            old = parent / f".{final.name}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write through a temporary file beside `path` and a rename, so a reader never sees half a file."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror}") from exc
        raise


def make_readable(path: Path | str) -> None:
    """The mode a plain open() would give (0666 less the umask): mkstemp's 0600 would follow the file into a
    bundle and its archive, unreadable to the service account on the device."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (since the last reset_peak_rss), in MiB.

    Linux: VmHWM, this process's own high-water mark; ru_maxrss also carries the parent's mark into a child at exec."""
    import resource

    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise): without this the next stage's
    peak starts from everything the earlier stages freed but glibc kept (SmolLM2: 2.0 GB resident after the bench
    stage without it, 0.4 GB with it)."""
    import gc
    import signal
    import threading

    # A Ctrl-C handled inside a finalizer that gc runs is printed and dropped ("Exception ignored"): hold SIGINT and
    # SIGTERM while collecting; unblocking delivers them here, in plain code, as KeyboardInterrupt / exit.
    hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if hold else None
    try:
        gc.collect()
        trim_heap()
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc keeps them: large blocks come from the heap once freed
    ones raised its mmap threshold). A no-op off glibc."""
    import ctypes

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # not find_library: it forks ldconfig


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process, so peak_rss_mb() measures one stage and not everything before it.

    Linux resets VmHWM (and with it ru_maxrss) on "5" written to /proc/self/clear_refs. False where that is not
    offered: peak_rss_mb() then keeps counting from the process start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock for writing `out`: a second writer to the same path fails at once, clearly."""
    import fcntl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InputError(f"another edgekit process is writing {out}; wait for it or choose another -o") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            lock_path.unlink(missing_ok=True)

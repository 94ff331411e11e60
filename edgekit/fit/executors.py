"""Where fit's candidates are compressed and checked for fidelity: inline, a local process pool (the default) or a
Ray cluster. Every executor has `submit(fn, *args) -> concurrent.futures.Future`; the search does not care which.

Only deterministic work goes to an executor (compress + fidelity against the cached source outputs). Latency is
timed afterwards, one candidate at a time, on the driver: parallel timing on shared cores measures contention.

Ray is optional (`pip install 'edgekit[ray]'`) and imported only here. Files travel by path, not through Ray's
object store: the work folder (exports, candidates) and `$EDGEKIT_CACHE` must be visible at the same path on
every node, which a local cluster always is and a multi-node one is with a shared filesystem.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from edgekit.errors import InputError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
# Ray's object store only carries small results here (paths, fidelity dicts): its default (30 % of RAM) would
# reserve gigabytes of /dev/shm on a shared host for nothing.
RAY_OBJECT_STORE_BYTES = 256 << 20


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str = "local"
    workers: int = 2
    address: str | None = None


def worker_identity() -> dict[str, Any]:
    """Who ran a task: host name, process id, and the Ray node where there is one."""
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    import sys

    if "ray" in sys.modules:
        ray = sys.modules["ray"]
        if ray.is_initialized():
            out["ray_node"] = ray.get_runtime_context().get_node_id()
    return out


def run_task(fn: Any, *args: Any) -> tuple[Any, dict[str, Any], float]:
    """`fn(*args)` on a worker: its result, the worker's identity, its seconds."""
    t0 = time.monotonic()
    result = fn(*args)
    return result, worker_identity(), time.monotonic() - t0


class Inline:
    """One worker, this process: each job runs at submit time (no pickling)."""

    kind = "inline"
    workers = 1

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def record(self) -> dict[str, Any]:
        return {"kind": "local", "workers": 1, "pool": "inline"}

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(run_task(fn, *args))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut


class LocalPool:
    """A process pool on this host. Spawned, not forked: the driver has run torch, and a forked OpenMP runtime
    can hang in the child."""

    kind = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Any = None

    def __enter__(self) -> LocalPool:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def record(self) -> dict[str, Any]:
        return {"kind": "local", "workers": self.workers, "pool": "process"}

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = self.pool.submit(run_task, fn, *args)
        return fut


class RayPool:
    """Tasks on a Ray cluster: the one this process already joined, `address`, or a local one started here
    (`workers` CPUs, no dashboard) and stopped again at the end."""

    kind = "ray"

    def __init__(self, workers: int, address: str | None) -> None:
        self.ray = import_ray()
        self.address = address
        self.requested = workers
        self.workers = workers
        self.started = False
        self.init_s = 0.0
        self.remote: Any = None

    def __enter__(self) -> RayPool:
        ray = self.ray
        if not ray.is_initialized():
            t0 = time.monotonic()
            if self.address:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise InputError(f"--address {self.address}: cannot join the Ray cluster ({exc})") from exc
            else:
                ray.init(num_cpus=self.requested, include_dashboard=False, log_to_driver=False,
                         object_store_memory=RAY_OBJECT_STORE_BYTES)
            self.started = True
            self.init_s = time.monotonic() - t0
            log.info("ray: cluster ready in %.1f s", self.init_s)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # A worker that dies (OOM, segfault) is retried once; an exception from the task itself is not retried:
        # the work is deterministic, the second try would fail the same way.
        self.remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()

    def record(self) -> dict[str, Any]:
        return {"kind": "ray", "workers": self.workers, "address": self.address or ("local" if self.started else "joined"),
                "started_here": self.started, "init_s": round(self.init_s, 2), "ray_version": self.ray.__version__}

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = self.remote.remote(fn, *args).future()
        return fut


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InputError("--executor ray needs ray, which is not installed", hint="pip install 'edgekit[ray]'") from exc
    return ray


def open_executor(spec: ExecutorSpec) -> Inline | LocalPool | RayPool:
    """The executor for `spec` (use it as a context manager). Checks what it can before any work starts."""
    if spec.kind not in EXECUTORS:
        raise InputError(f"unknown executor {spec.kind!r}; one of {', '.join(EXECUTORS)}")
    if spec.kind == "ray":
        return RayPool(spec.workers, spec.address)
    if spec.address:
        raise InputError("--address is for --executor ray")
    return LocalPool(spec.workers) if spec.workers > 1 else Inline()

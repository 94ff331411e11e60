"""Back a session's weights with transparent huge pages (Linux): decode streams them all every step.

Most distributions ship THP in `madvise` mode, where only memory a program asks for gets huge pages, and neither
onnxruntime nor glibc's malloc asks: SmolLM2's int8 session sat in ~35,000 4 KiB pages, far past the L2 TLB's reach
(3,072 entries on Zen 4), and hardware prefetchers stop at 4 KiB page boundaries. After a session is created, this
asks for its new anonymous mappings: MADV_HUGEPAGE, then MADV_COLLAPSE (Linux 6.1+), which rebuilds the pages
already there as huge ones at once instead of waiting for khugepaged. Measured (benchmarks/results/
2026-12-01-hugepages-ab.md, fresh processes alternating, 1 thread): SmolLM2 decode int8-weight 1.63x, int4-rtn 1.40x,
fp32 1.25x, prefill unchanged; the profiler puts the gain in the MatMulNBits kernels (gate_up 3.0-3.4 -> 2.4-2.5 ms a
step). Why exactly (TLB reach, prefetch across pages) is inferred: a lone MatMulNBits over 100 MB does not move
(benchmarks/kernel_rates.py). Cost: the collapse copies the pages once (0.1-0.7 s for the int8/int4 models, ~2 s for
830 MiB of fp32).

`EDGEKIT_HUGE_PAGES=0` turns it off. Anywhere it cannot apply (not Linux, THP `never`, an old kernel) it does
nothing and says so in what it returns.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE = 2 << 20
MIN_BYTES = 4 << 20  # smaller mappings hold no weights worth a collapse
ENV = "EDGEKIT_HUGE_PAGES"
Range = tuple[int, int]
LAST: dict[str, Any] = {}  # what the latest collapse_new did (make_session does not return it)


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get(ENV, "1") != "0"


def anonymous_mappings() -> set[Range]:
    """Writable anonymous (and heap) mappings of this process, as (start, end) addresses; empty off Linux."""
    if not sys.platform.startswith("linux"):
        return set()
    out: set[Range] = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                path = parts[5] if len(parts) > 5 else ""
                if "w" not in parts[1] or path not in ("", "[heap]"):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.add((lo, hi))
    except OSError:
        return set()
    return out


def collapse_new(before: set[Range]) -> dict[str, Any]:
    """madvise the mappings that appeared (or changed) since `before` into huge pages; what it did."""
    if not enabled():
        return _record(applied=False, why="off (not Linux, or EDGEKIT_HUGE_PAGES=0)")
    mode = thp_mode()
    if mode == "never":
        return _record(applied=False, why="transparent huge pages are off on this system (never)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = collapsed = 0
    for lo, hi in new_ranges(before, anonymous_mappings()):
        start, end = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
        if end - start < MIN_BYTES:
            continue
        if libc.madvise(start, end - start, MADV_HUGEPAGE) == 0:
            advised += end - start
        # EINVAL on kernels before 6.1; EAGAIN/ENOMEM when no huge page is free: both leave 4 KiB pages, correct.
        if libc.madvise(start, end - start, MADV_COLLAPSE) == 0:
            collapsed += end - start
    log.debug("huge pages: %d MiB advised, %d MiB collapsed (THP mode %s)", advised >> 20, collapsed >> 20, mode)
    return _record(applied=collapsed > 0 or advised > 0, thp_mode=mode, advised_mib=advised >> 20,
                   collapsed_mib=collapsed >> 20)


def _record(**what: Any) -> dict[str, Any]:
    """Keep what this call did as LAST, whichever way it ended, and return it."""
    LAST.clear()
    LAST.update(what)
    return dict(LAST)


def new_ranges(before: set[Range], now: set[Range]) -> list[Range]:
    """What `now` maps beyond `before`: whole new mappings, and the grown tail of one that kept its start (the heap,
    a mapping extended in place), so memory that was there before is not copied again."""
    ends = dict(before)
    out = []
    for lo, hi in sorted(now - before):
        old_end = ends.get(lo)
        if old_end is None:
            out.append((lo, hi))
        elif hi > old_end:
            out.append((old_end, hi))
    return out


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unknown"
    return text[text.index("[") + 1: text.index("]")] if "[" in text else "unknown"


def anon_huge_mib() -> float | None:
    """AnonHugePages of this process (MiB): how much of it huge pages back now; None off Linux."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None

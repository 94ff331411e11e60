"""The search over candidates: two rounds, cheapest first, in a process pool (or inline with one worker)."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.fit import INT4_BLOCKS, Candidate, EvalOptions, Outcome, evaluate, figures
from edgekit.source import SourceModel
from edgekit.specs import Profile, Target


def _primary(c: Candidate) -> bool:
    """The finest knob of each method: if it fails fidelity, the coarser ones of that method will too."""
    block = dict(c.options).get("block_size")
    return block is None or block == min(INT4_BLOCKS)


@dataclass
class _Rounds:
    """What every evaluation round of a search shares; `left` is the candidate budget still unspent."""

    pool: Any
    exported: Path
    source: SourceModel
    profile: Profile
    target: Target
    work: Path
    deadline: float
    workers: int
    opts: EvalOptions
    left: int


def search(outcomes: list[Outcome], exported: Path, source: SourceModel, profile: Profile, target: Target,
           work: Path, *, deadline: float, max_candidates: int, workers: int, opts: EvalOptions) -> None:
    """Evaluate the unpruned candidates; failures are recorded and do not stop the search.

    Two rounds, each cheapest first: one candidate per method at its most faithful knob, then the coarser knobs
    of only those methods whose first candidate kept the fidelity floors.
    """
    pending = sorted((o for o in outcomes if o.status == "pending"), key=lambda o: o.estimate["size_mb"] or 0.0)
    first = [o for o in pending if _primary(o.candidate)]
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        rounds = _Rounds(pool, exported, source, profile, target, work, deadline, workers, opts, max_candidates)
        _evaluate_round(first, rounds)
        verdict = {o.candidate.method: o for o in first}
        second = []
        for o in pending:
            if o in first:
                continue
            head = verdict.get(o.candidate.method)
            lost = [r["name"] for r in (head.failed_rules if head else []) if r["name"].startswith("fidelity.")]
            if head is not None and (head.status == "failed" or lost):
                o.status = "pruned"
                o.reason = f"{head.candidate.label} already {'failed' if head.status == 'failed' else 'misses ' + lost[0]}; coarser blocks lose more"
            else:
                second.append(o)
        _evaluate_round(second, rounds)


def _evaluate_round(todo: list[Outcome], rounds: _Rounds) -> None:
    """Bench and gate `todo` in batches of `rounds.workers` until the candidate or time budget ends."""
    from edgekit import progress
    from edgekit.gate import gate

    for extra in todo[rounds.left:]:
        extra.status, extra.reason = "skipped", "beyond --max-candidates"
    todo = todo[: rounds.left]
    rounds.left -= len(todo)
    workers, deadline, profile = rounds.workers, rounds.deadline, rounds.profile
    with progress.stage("fit: candidates", total=len(todo)) as st:
        for batch_start in range(0, len(todo), workers):
            batch = todo[batch_start: batch_start + workers]
            if time.monotonic() > deadline:
                for o in todo[batch_start:]:
                    o.status, o.reason = "skipped", "time budget ended"
                break
            t0 = time.monotonic()
            futures = [(o, rounds.pool.submit(evaluate, o.candidate, rounds.exported, rounds.source, profile, rounds.target,
                                              rounds.work / o.candidate.label.replace("/", "_"), rounds.opts))
                       for o in batch]
            for o, fut in futures:
                try:
                    o.folder, o.report = fut.result()
                except (EdgekitError, Exception) as exc:  # one broken candidate must not end the search
                    o.status, o.reason = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    st.advance(info=o.candidate.label)
                    continue
                o.seconds = time.monotonic() - t0
                o.figures = figures(o.report)
                o.gate = gate(o.report, profile)
                o.failed_rules = [r.to_dict() for r in o.gate.failed]
                o.status = "passed" if o.gate.passed else "rejected"
                o.reason = "; ".join(r.describe() for r in o.gate.failed)
                st.advance(info=o.candidate.label)


class _Inline:
    """A stand-in for a process pool that runs each job at submit time (no pickling, one process)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut

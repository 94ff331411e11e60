"""The search over candidates: two rounds of compress + fidelity on an executor, cheapest first, shared by every
profile of one target; then latency, serially on this host, per profile.

A candidate is compressed and checked once however many profiles want it: fidelity does not depend on the
profile (same source outputs, same variant). What does depend on it (workload, device estimate, gate) is done per
profile afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bench.sourceref import SourceOutputs
from edgekit.errors import EdgekitError
from edgekit.fit import INT4_BLOCKS, Candidate, EvalOptions, Outcome, evaluate, figures
from edgekit.source import SourceModel
from edgekit.specs import Profile, Target


def _primary(c: Candidate) -> bool:
    """The finest knob of each method: if it fails fidelity, the coarser ones of that method will too."""
    block = dict(c.options).get("block_size")
    return block is None or block == min(INT4_BLOCKS)


@dataclass
class Plan:
    """One profile's view of the search: its outcomes, one per candidate, in the shared candidate order."""

    profile: Profile
    outcomes: list[Outcome]

    def get(self, label: str) -> Outcome:
        return next(o for o in self.outcomes if o.candidate.label == label)


@dataclass
class Shared:
    """What every evaluation round of one target's search shares; `left` is the candidate budget still unspent."""

    pool: Any
    exported: Path
    source: SourceModel
    profile: Profile  # any profile of the target: bench_quality only reads its target name
    target: Target
    work: Path
    deadline: float
    opts: EvalOptions
    outputs: SourceOutputs
    left: int
    results: dict[str, tuple[str, Any]] = field(default_factory=dict)  # label → ("ok", QualityRun) | (status, reason)
    rotated: dict[str, Path] = field(default_factory=dict)  # rotation mode → its export, made on first use

    def parent(self, method: str) -> Path:
        """The export `method` is compressed from: the one `edgekit build --method` would make (int8-weight's is
        rotated by default: edgekit.export.rotation.METHOD_DEFAULTS), so fit measures what a build ships."""
        from edgekit.export.rotation import method_target

        target = method_target(self.target, method)
        if target is self.target:
            return self.exported
        mode = target.export.rotate.mode
        if mode not in self.rotated:
            from edgekit.export import export

            self.rotated[mode] = export(self.source, target, self.work / f"export-rotate-{mode}").path
        return self.rotated[mode]


@dataclass(frozen=True)
class QualityRun:
    folder: Path
    quality: dict[str, Any]
    worker: dict[str, Any]
    seconds: float


def search(plans: list[Plan], shared: Shared) -> None:
    """Compress and check the candidates any plan still wants; failures are recorded and do not stop the search.

    Two rounds, each cheapest first: one candidate per method at its most faithful knob, then the coarser knobs
    of only those methods whose first candidate kept the fidelity floors (of the profile asking).
    """
    order = sorted(plans[0].outcomes, key=lambda o: o.estimate["size_mb"] or 0.0)
    wanted = [o.candidate for o in order if any(p.get(o.candidate.label).status == "pending" for p in plans)]
    first = [c for c in wanted if _primary(c)]
    _round(first, shared)
    _apply(plans, first, shared)
    second = []
    for c in wanted:
        if c in first:
            continue
        for plan in plans:
            o = plan.get(c.label)
            head = next((plan.get(h.label) for h in first if h.method == c.method), None)
            lost = [r["name"] for r in (head.failed_rules if head else []) if r["name"].startswith("fidelity.")]
            if o.status == "pending" and head is not None and (head.status == "failed" or lost):
                o.status = "pruned"
                o.reason = f"{head.candidate.label} already {'failed' if head.status == 'failed' else 'misses ' + lost[0]}; coarser blocks lose more"
        if any(p.get(c.label).status == "pending" for p in plans):
            second.append(c)
    _round(second, shared)
    _apply(plans, second, shared)


def _round(todo: list[Candidate], shared: Shared) -> None:
    """Compress + fidelity for `todo` on the executor, in batches of its workers, until a budget ends."""
    from edgekit import progress

    for extra in todo[shared.left:]:
        shared.results[extra.label] = ("skipped", "beyond --max-candidates")
    todo = todo[: shared.left]
    shared.left -= len(todo)
    workers = shared.pool.workers
    with progress.stage("fit: candidates (compress + fidelity)", total=len(todo)) as st:
        for batch_start in range(0, len(todo), workers):
            if time.monotonic() > shared.deadline:
                for c in todo[batch_start:]:
                    shared.results[c.label] = ("skipped", "time budget ended")
                break
            batch = todo[batch_start: batch_start + workers]
            futures = [(c, shared.pool.submit(evaluate, c, shared.parent(c.method), shared.source, shared.profile, shared.target,
                                              shared.work / c.label.replace("/", "_"), shared.opts, shared.outputs))
                       for c in batch]
            for c, fut in futures:
                try:
                    (folder, quality), worker, seconds = fut.result()
                    shared.results[c.label] = ("ok", QualityRun(Path(folder), quality, worker, seconds))
                except (EdgekitError, Exception) as exc:  # one broken candidate (or worker) must not end the search
                    shared.results[c.label] = ("failed", _describe(exc))
                st.advance(info=c.label)


def _describe(exc: BaseException) -> str:
    # Ray wraps a task's exception (RayTaskError, with the remote traceback as its text): say what the task raised.
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _apply(plans: list[Plan], done: list[Candidate], shared: Shared) -> None:
    """Each plan's outcomes from the shared results; fidelity floors judged per profile (for round two)."""
    from edgekit.gate import gate

    for c in done:
        status, value = shared.results[c.label]
        for plan in plans:
            o = plan.get(c.label)
            if o.status != "pending":
                continue
            if status != "ok":
                o.status, o.reason = status, str(value)
                continue
            o.folder, o.quality, o.worker, o.seconds = value.folder, value.quality, value.worker, value.seconds
            partial = {"schema": "edgekit/report@1", "variant": {"task": shared.source.task}, **value.quality}
            o.failed_rules = [r.to_dict() for r in gate(partial, plan.profile).failed if r.name.startswith("fidelity.")]
            o.status = "benched"


def measure_latency(plan: Plan, source: SourceModel, opts: EvalOptions, timed: dict[tuple[str, ...], Any]) -> None:
    """Latency of every candidate with fidelity figures, one at a time on this host; then figures and gate.

    `timed` carries host measurements between the plans of one fit: a profile with the same variant, workload and
    threads as one already timed reuses that measurement (timing it again would only add a noisier sample)."""
    from edgekit import progress
    from edgekit.artifact import OnnxArtifact
    from edgekit.bench.core import bench_performance, host_latency
    from edgekit.gate import gate

    todo = [o for o in plan.outcomes if o.status == "benched"]
    args = {k: v for k, v in opts.bench.items() if k in ("eval_data", "max_time_s")}
    on_device = bool(opts.bench.get("on_device", False))
    with progress.stage(f"fit: latency ({plan.profile.name})", total=len(todo)) as st:
        for o in todo:
            assert o.folder is not None and o.quality is not None
            t0 = time.monotonic()
            key = (str(o.folder), plan.profile.workload.model_dump_json())
            try:
                variant = OnnxArtifact.load(o.folder)
                if key not in timed:
                    timed[key] = (host_latency(variant, source, plan.profile, **args), plan.profile.name)
                latency, o.latency_profile = timed[key]
                report = bench_performance(variant, source, plan.profile, o.quality, on_device=on_device,
                                           latency=latency, **args)
            except (EdgekitError, Exception) as exc:
                o.status, o.reason = "failed", f"latency: {_describe(exc)}"
                st.advance(info=o.candidate.label)
                continue
            o.latency_seconds = time.monotonic() - t0
            o.report = report
            o.figures = figures(report)
            o.gate = gate(report, plan.profile)
            o.failed_rules = [r.to_dict() for r in o.gate.failed]
            o.status = "passed" if o.gate.passed else "rejected"
            o.reason = "; ".join(r.describe() for r in o.gate.failed)
            st.advance(info=o.candidate.label)

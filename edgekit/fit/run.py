"""`fit` over one or several profiles: the source's outputs once, one export and one candidate set per target,
compress + fidelity on the executor, latency serially on this host, one bundle (with its fit.json) per profile.

One profile: the bundle is OUT. Several: OUT/<profile name>/ each, and OUT/fit-summary.json (which profile chose
what, which profiles shared a target's candidates).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError
from edgekit.fit import (
    EvalOptions,
    FitResult,
    Outcome,
    candidate_space,
    choose,
    estimate,
    mark_pareto,
    nearest_miss,
    parameter_split,
    prune,
)
from edgekit.fit.executors import ExecutorSpec
from edgekit.fit.search import Plan
from edgekit.specs import Profile, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    methods: list[str] | None = None
    max_candidates: int = 12
    time_budget_min: float = 60.0
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    bench_options: dict[str, Any] = field(default_factory=dict)
    calibration: Path | None = None
    command: str = ""
    allow_implausible_source: bool = False


def _targets(profiles: list[Profile], methods: list[str] | None) -> dict[str, Target]:
    from edgekit.catalog import check_method, load_target

    names = [p.name for p in profiles]
    if not profiles or len(set(names)) != len(names):
        raise InputError(f"--profile: give each profile once (got {', '.join(names) or 'none'})")
    targets = {p.target: load_target(p.target) for p in profiles}
    for target in targets.values():
        for m in methods or []:
            check_method(m, target, where="--methods")
    return targets


def fit_profiles(source_spec: str, profiles: list[Profile], out: Path, opts: FitOptions) -> list[FitResult]:
    """Search each profile's candidate space, sharing the work profiles have in common; write the bundles."""
    from edgekit.bench.core import DEFAULT_DECODE_PROMPTS, DEFAULT_EVAL_TOKENS
    from edgekit.bench.sourceref import source_outputs
    from edgekit.fit.executors import open_executor
    from edgekit.pipeline import BuildOptions, check_text_files, checked_source
    from edgekit.util import exclusive

    targets = _targets(profiles, opts.methods)
    bench = opts.bench_options
    eval_data = bench.get("eval_data")
    check_text_files(eval_data, opts.calibration)
    pool = open_executor(opts.executor)  # before minutes of work: a missing ray is exit 2 now
    deadline = time.monotonic() + opts.time_budget_min * 60
    source, sanity = checked_source(source_spec, BuildOptions(eval_data=eval_data,
                                                              allow_implausible_source=opts.allow_implausible_source))
    split = parameter_split(source)
    plans = []
    for p in profiles:
        target = targets[p.target]
        outcomes = [Outcome(c, estimate(c, split, p, target, source.config)) for c in candidate_space(target, opts.methods)]
        for o in outcomes:
            prune(o, p, source.task)
        plans.append(Plan(p, outcomes))
    with exclusive(out):
        # Absolute: quantizers run tools inside their own temp folders, where a relative path breaks.
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent)).resolve()
        try:
            outputs = source_outputs(source, eval_data, int(bench.get("eval_tokens", DEFAULT_EVAL_TOKENS)),
                                     int(bench.get("decode_prompts", DEFAULT_DECODE_PROMPTS)))
            context = {"source_outputs": outputs.record()}
            with pool:
                context["executor"] = _search_targets(plans, targets, source, work, deadline, opts, outputs, pool)
            # The pool is closed: nothing else runs on this host's cores while latency is timed.
            return _finish(plans, source, sanity, out, work, opts, outputs, context)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _search_targets(plans: list[Plan], targets: dict[str, Target], source: Any, work: Path, deadline: float,
                    opts: FitOptions, outputs: Any, pool: Any) -> dict[str, Any]:
    from edgekit.export import export
    from edgekit.fit.search import Shared, search

    evalopts = EvalOptions(opts.bench_options, opts.calibration)
    for name, target in targets.items():
        group = [p for p in plans if p.profile.target == name]
        exported = export(source, target, work / name / "export").path
        shared = Shared(pool, exported, source, group[0].profile, target, work / name, deadline, evalopts, outputs,
                        opts.max_candidates)
        search(group, shared)
    return dict(pool.record())


def latency_host() -> dict[str, Any]:
    from edgekit.bench.hostinfo import host_info

    info = host_info()
    return {"hostname": socket.gethostname(), "cpu_model": info["cpu_model"], "machine": info["machine"],
            "isa_flags": info["isa_flags"], "cores": info["cores"]}


def _finish(plans: list[Plan], source: Any, sanity: dict[str, Any], out: Path, work: Path, opts: FitOptions,
            outputs: Any, context: dict[str, Any]) -> list[FitResult]:
    from edgekit.fit.search import measure_latency

    evalopts = EvalOptions(opts.bench_options, opts.calibration)
    context["latency_host"] = latency_host()
    context["profiles"] = [p.profile.name for p in plans]
    results = []
    timed: dict[tuple[str, ...], Any] = {}
    for plan in plans:
        measure_latency(plan, source, evalopts, timed)
        mark_pareto(plan.outcomes)
        chosen = choose(plan.outcomes)
        nearest = None if chosen else nearest_miss(plan.outcomes)
        dest = out if len(plans) == 1 else out / plan.profile.name
        shared_with = [p.profile.name for p in plans if p is not plan and p.profile.target == plan.profile.target]
        bundle = _bundle(plan, chosen, nearest, source, sanity, dest, work / f"fit-{plan.profile.name}", opts, outputs,
                         {**context, "shared_with": shared_with})
        results.append(FitResult(plan.outcomes, chosen, nearest, bundle, plan.profile.name))
    if len(plans) > 1:
        _summary(out, results, context)
    return results


def _bundle(plan: Plan, chosen: Outcome | None, nearest: Outcome | None, source: Any, sanity: dict[str, Any], dest: Path,
            work: Path, opts: FitOptions, outputs: Any, context: dict[str, Any]) -> Path | None:
    from edgekit.artifact import OnnxArtifact
    from edgekit.bundle.reference_build import write_reference
    from edgekit.catalog import load_target
    from edgekit.fit.report import write_fit_files
    from edgekit.pipeline import BuildOptions, BundleJob, write_outputs
    from edgekit.records import set_sanity

    pick = chosen or nearest
    if pick is None or pick.folder is None or pick.report is None:
        return None
    files = write_fit_files(plan.outcomes, chosen, nearest, plan.profile, work, context)
    data = opts.bench_options.get("eval_data")
    # The bundle's reference.npz comes from the same cached source outputs the fidelity used.
    ref = write_reference(source, data, int(pick.report["eval"]["tokens"]), work / "reference.npz", outputs=outputs)
    if ref is not None:
        files["reference.npz"] = ref
    report = {**pick.report, "gate": pick.gate.to_dict()}
    set_sanity(report, sanity)
    job = BundleJob(OnnxArtifact.load(pick.folder), report, pick.gate, plan.profile, load_target(plan.profile.target),
                    pick.candidate.method, extra_files=files)
    return write_outputs(job, dest, BuildOptions(command=opts.command, calibration=opts.calibration))


def _summary(out: Path, results: list[FitResult], context: dict[str, Any]) -> None:
    data = {"schema": "edgekit/fit-summary@1", **context,
            "results": [{"profile": r.profile, "passed": r.passed, "chosen": r.chosen.candidate.label if r.chosen else None,
                         "bundle": str(r.bundle) if r.bundle else None} for r in results]}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".fit-summary.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(out / "fit-summary.json")

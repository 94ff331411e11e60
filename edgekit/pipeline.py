"""`build`: source → export → compress → bench → gate → bundle, with a record of every stage.

Intermediate folders live in a work directory beside OUT and are removed at the end; the bundle is written by
BundleWriter, so OUT is either the previous bundle or the complete new one — never half of either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgekit import __version__, progress
from edgekit.artifact import OnnxArtifact
from edgekit.errors import EdgekitError, InputError
from edgekit.records import set_sanity
from edgekit.specs import Profile, Target
from edgekit.stageproc import StageProcess

if TYPE_CHECKING:
    from edgekit.gate import GateResult
    from edgekit.source import SourceModel
    from edgekit.specs import Target
from edgekit.util import exclusive, is_user_os_error, peak_rss_mb, release_memory, reset_peak_rss

log = logging.getLogger(__name__)
T = TypeVar("T")

SCOPE = "per stage: build process + stage worker"
LEAN_MMAP_THRESHOLD = 128 << 10  # edgekit.stageproc.StageProcess
# A local source whose weight files are smaller builds in one process (stage_workers).
SMALL_SOURCE_BYTES = 64 << 20
# What to do when a stage fails, said once here rather than at every raise site.
STAGE_HINTS = {
    "source": "check the SOURCE path or name",
    "distill": "try fewer --steps or another --student-layers",
    "export": "try --opset 18, or export once with `edgekit export` to see the details",
    "compress": "try another --method (e.g. int8-weight), or `edgekit compress` with -v",
    "bench": "run `edgekit bench` on the variant with -v",
    "gate": "check the profile with `edgekit profiles show`",
    "bundle": "check free space and permissions next to -o",
}


@dataclass
class BuildOptions:
    method: str | None = None
    then: str | None = None
    eval_data: Path | None = None
    calibration: Path | None = None
    archive: bool = False
    keep_work: bool = False
    trust_remote_code: bool = False
    allow_implausible_source: bool = False  # recorded in report.json source.sanity.override and the manifest
    command: str = ""
    bench: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    rotate: str | None = None  # export's rotation mode (None: the target's); edgekit.export.rotation


@dataclass
class BuildResult:
    bundle: Path
    gate: Any
    report: dict[str, Any]
    stages: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return bool(self.gate.passed)


class _Stages:
    """Runs named stages under the progress display and records each one's time and peak RSS for build.json."""

    def __init__(self, previous: dict[str, float] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.plan: list[str] = ["source"]
        self.previous = previous or {}
        self.peak_mb = 0.0  # the build's peak RSS: the largest stage peak
        self.windowed = True  # every stage's peak was measured from its own start (see util.reset_peak_rss)
        self._worker_mb: float | None = None  # the running stage's worker peak (None: it ran in this process)

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        release_memory()
        self.windowed = reset_peak_rss() and self.windowed
        index = self.plan.index(name) + 1 if name in self.plan else len(self.records) + 1
        label = f"[{index}/{len(self.plan)}] {name}" if len(self.plan) > 1 else name
        try:
            with progress.stage(label) as st:
                if name in self.previous:  # the last build into OUT is the best ETA there is
                    st.expect(self.previous[name])
                yield
        except EdgekitError as exc:
            self._record(name, t0, ok=False)
            exc.message = f"build stage '{name}' failed: {exc.message}"
            exc.hint = exc.hint or STAGE_HINTS.get(name)
            raise
        except Exception as exc:
            self._record(name, t0, ok=False)
            if is_user_os_error(exc):
                raise InputError(f"build stage '{name}' failed: {getattr(exc, 'strerror', exc)}: "
                                 f"{getattr(exc, 'filename', '')}", hint="free space or choose another -o") from exc
            raise RuntimeError(f"build stage '{name}' failed unexpectedly: {type(exc).__name__}: {exc}") from exc
        self._record(name, t0, ok=True)

    def _record(self, name: str, t0: float, *, ok: bool) -> None:
        import resource

        # Bench measures in subprocesses. Linux hands a child the parent's RSS high-water mark at exec, so this is
        # at least the parent's size at the time and only an upper bound for the children themselves.
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        worker, self._worker_mb = self._worker_mb, None
        # A stage run in a worker: this process's peak while it waited plus the worker's own, an upper bound of
        # the two together (this process holds still while its worker runs).
        peak = peak_rss_mb() + (worker or 0.0)
        self.peak_mb = max(self.peak_mb, peak)
        self.records.append({"stage": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 2),
                             "peak_rss_mb": round(peak, 1), "children_peak_rss_mb": round(children, 1),
                             "worker_peak_rss_mb": None if worker is None else round(worker, 1)})

    def memory(self, parameters: int | None) -> dict[str, Any]:
        """The build's peak RSS (MiB, this process plus the stage's worker), beside the source's fp32 weight bytes.

        Not counted: bench's measurement subprocesses (children_peak_rss_mb), which run the models being compared."""
        fp32_mb = parameters * 4 / 2**20 if parameters else None
        return {"peak_rss_mb": round(self.peak_mb, 1), "peak_stage": max(self.records, key=lambda r: r["peak_rss_mb"])["stage"],
                "scope": SCOPE if self.windowed else "process so far (no peak reset on this OS)",
                "fp32_weights_mb": round(fp32_mb, 1) if fp32_mb else None,
                "ratio_to_fp32_weights": round(self.peak_mb / fp32_mb, 3) if fp32_mb else None}

    def call(self, name: str, fn: Callable[..., T], *args: Any, worker: StageProcess | None = None, **kwargs: Any) -> T:
        """fn(*args, **kwargs) as stage `name`: in `worker` when given (fn must then be a module-level function)."""
        with self.run(name):
            if worker is None:
                return fn(*args, **kwargs)
            try:
                return worker.call(fn, *args, **kwargs)
            finally:
                self._worker_mb = worker.last_peak_mb


def _previous_timings(out: Path) -> dict[str, float]:
    try:
        stages = json.loads((out / "build.json").read_text())["stages"]
        return {str(s["stage"]): float(s["seconds"]) for s in stages}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _plan(method: str, then: str | None) -> list[str]:
    quant = then if method == "distill" else method
    return ["source", *(["distill"] if method == "distill" else []), "export",
            *([] if quant in (None, "fp32") else ["compress"]), "bench", "gate", "bundle"]


def build(source_spec: str, profile: Profile, out: Path | str, options: BuildOptions | None = None) -> BuildResult:
    """Run the whole pipeline and write the bundle at `out`.

    The bundle is written even when the gate fails — gate.json and the manifest's `gate_passed: false` say so,
    and the CLI exits 1 — because the failing report is what the user needs to choose the next method.
    """
    from edgekit.bundle import clean_stale
    from edgekit.catalog import check_method, load_target

    opts = options or BuildOptions()
    out = Path(out)
    target = load_target(profile.target)
    if opts.method is not None:
        check_method(opts.method, target, where="--method")
    if opts.then is not None and opts.method != "distill":
        raise InputError("--then only applies with --method distill (it quantizes the student)")
    check_text_files(opts.eval_data, opts.calibration)
    stages = _Stages(_previous_timings(out))
    with exclusive(out):
        for stale in clean_stale(out):
            log.info("removed %s left by an interrupted build", stale)
        # Absolute, so no stage depends on the working directory (quantizers run tools in their own folders).
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent)).resolve()
        try:
            # Every stage that imports torch runs in a worker: this process stays light, and each worker's memory
            # goes back to the OS before the next stage (edgekit.stageproc).
            # A small source builds in this process: a worker's start-up (~3 s of imports each) is then most of the
            # build, and there is no memory worth handing back (stage_workers).
            workers = stage_workers(source_spec)
            with _worker(workers) as torch_worker:  # source, distill and export share one: all three need torch
                source, sanity = stages.call("source", checked_source, source_spec, opts, worker=torch_worker)
                method = opts.method or profile.method_for(source.task)
                check_method(method, target, where="--method" if opts.method else f"profile {profile.name} default_method")
                stages.plan = _plan(method, opts.then)
                variant, _student, extra = _make_variant(stages, source, method, target, work, opts, torch_worker)
            with _worker(workers) as worker:
                report, extra_files = stages.call("bench", _bench_and_evidence, variant, source, profile, target, opts,
                                                  work, worker=worker)
            report.update(extra)
            set_sanity(report, sanity)
            if "distill" in report:
                report["distill"].update(retention(report))
            from edgekit.gate import gate as run_gate

            result = stages.call("gate", run_gate, report, profile)
            report["gate"] = result.to_dict()
            with stages.run("bundle"):
                job = BundleJob(variant, report, result, profile, target, method, stages.records, extra_files,
                                stages.memory(source.fingerprint.get("parameters")))
                bundle = write_outputs(job, out, opts)
        finally:
            if opts.keep_work:
                log.info("intermediate folders kept in %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return BuildResult(bundle, result, report, stages.records)


def check_text_files(eval_data: Path | None, calibration: Path | None) -> None:
    """Read the user's text files before minutes of export go by: a typo is exit 2 at once."""
    from edgekit.data import read_text_file

    if eval_data is not None:
        read_text_file(eval_data, what="eval data")
    if calibration is not None:
        read_text_file(calibration, what="calibration file")


def checked_source(spec: str, opts: BuildOptions) -> tuple[Any, dict[str, Any]]:
    """Load SOURCE and run the integrity stage on it, before anything is exported (SourceCheckFailed → exit 2)."""
    from edgekit.source import load_source
    from edgekit.source.integrity import check_source

    source = load_source(spec, trust_remote_code=opts.trust_remote_code)
    return source, check_source(source, eval_data=opts.eval_data, allow_implausible=opts.allow_implausible_source)


def retention(report: dict[str, Any]) -> dict[str, float | None]:
    """A distilled variant's fidelity kept, at its size ratio to the teacher (benched against the teacher)."""
    perf, fid = report.get("performance") or {}, report.get("fidelity") or {}
    size = ((perf.get("variant") or {}).get("model_size_mb") or {}).get("value")
    teacher = ((perf.get("source") or {}).get("model_size_mb") or {}).get("value")
    ppl_ratio = (fid.get("ppl_ratio") or {}).get("value")
    top1 = (fid.get("top1_agreement") or fid.get("agreement") or fid.get("cosine_mean") or {}).get("value")
    return {"size_ratio": round(size / teacher, 4) if size and teacher else None,
            "ppl_retention": round(1.0 / ppl_ratio, 4) if ppl_ratio else None,
            "agreement_retention": top1}


def stage_workers(source_spec: str) -> bool:
    """Whether a build runs its stages in worker processes (edgekit.stageproc). EDGEKIT_STAGE_WORKERS=1 or 0 decides;
    otherwise yes, except for a local source whose weight files hold under SMALL_SOURCE_BYTES."""
    forced = os.environ.get("EDGEKIT_STAGE_WORKERS", "").strip().lower()
    if forced in ("1", "0", "always", "never"):
        return forced in ("1", "always")
    from edgekit.source import find_weight_files

    path = Path(source_spec).expanduser()
    try:
        files = [path] if path.is_file() else find_weight_files(path) if path.is_dir() else []
        size = sum(f.stat().st_size for f in files)
    except OSError:
        return True
    return not files or size >= SMALL_SOURCE_BYTES


def _worker(enabled: bool) -> contextlib.AbstractContextManager[StageProcess | None]:
    return StageProcess() if enabled else contextlib.nullcontext()


def _make_variant(stages: _Stages, source: SourceModel, method: str, target: Target, work: Path,
                  opts: BuildOptions, torch_worker: StageProcess | None) -> tuple[OnnxArtifact, Any, dict[str, Any]]:
    """Export (a distilled student first, when asked) in `torch_worker`, then close it and compress in a worker
    that never imports torch; returns the variant and what it came from."""
    from edgekit.export import export

    extra: dict[str, Any] = {}
    model_source = source
    if method == "distill":
        from edgekit.distill import DistillSpec, distill

        spec = DistillSpec(**opts.distill)
        model_source = stages.call("distill", distill, source, spec, work / "student", worker=torch_worker)
        extra["distill"] = {"student": model_source.fingerprint, "teacher": source.fingerprint}
    quant = opts.then if method == "distill" else method
    exported = stages.call("export", export, model_source, _rotating(target, quant, opts), work / "export",
                           rotate=opts.rotate, worker=torch_worker)
    if torch_worker is None:
        return _compressed(stages, exported, quant, target, work, opts, None), model_source, extra
    torch_worker.close()
    with StageProcess(mmap_threshold=LEAN_MMAP_THRESHOLD) as worker:  # no torch there: a lean heap costs nothing
        return _compressed(stages, exported, quant, target, work, opts, worker), model_source, extra


def _compressed(stages: _Stages, exported: OnnxArtifact, quant: str | None, target: Target, work: Path,
                opts: BuildOptions, worker: StageProcess | None) -> OnnxArtifact:
    if quant in (None, "fp32"):
        return exported
    from edgekit.compress import compress

    variant: OnnxArtifact = stages.call("compress", compress, exported, quant, target, work / "compress",
                                        calibration=opts.calibration, worker=worker)
    return variant


def _rotating(target: Target, method: str | None, opts: BuildOptions) -> Target:
    """The target with the method's default rotation (edgekit.export.rotation.METHOD_DEFAULTS) when neither --rotate
    nor the target chose one; as a target default, it is skipped for graphs the fused writer does not write."""
    from edgekit.export.rotation import method_target

    return target if opts.rotate is not None else method_target(target, method)


def _bench(variant: OnnxArtifact, source: SourceModel, profile: Profile, opts: BuildOptions) -> dict[str, Any]:
    from edgekit.bench import bench

    return dict(bench(variant, source, profile, eval_data=opts.eval_data, **opts.bench))


def _bench_and_evidence(variant: OnnxArtifact, source: SourceModel, profile: Profile, target: Target, opts: BuildOptions,
                        work: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """bench, then the reference data the bundle carries, then (arm64 targets) the emulated target-ISA check."""
    from edgekit.bench.core import DEFAULT_DECODE_PROMPTS

    report = _bench(variant, source, profile, opts)
    files = _reference_files(source, report, work, int(opts.bench.get("decode_prompts", DEFAULT_DECODE_PROMPTS)))
    if files and target.arch == "arm64":
        from edgekit.device.emulate import build_check

        build_check(report, variant.path, files["reference.npz"], profile)
    return report, files


def _reference_files(source: SourceModel, report: dict[str, Any], work: Path, decode_prompts: int) -> dict[str, Path]:
    """reference.npz: the source's next-token reference on the eval tokens the report's fidelity used, from the
    source outputs the bench cached (the same settings: a cache hit, the source does not run again)."""
    from edgekit.bench.core import DEFAULT_EVAL_TOKENS
    from edgekit.bench.sourceref import source_outputs
    from edgekit.bundle.reference_build import write_reference

    if source.task != "text-generation":
        return {}
    ev = report.get("eval") or {}
    data = None if ev.get("data") in (None, "builtin:eval") else Path(str(ev["data"]))
    tokens = int(ev.get("tokens") or DEFAULT_EVAL_TOKENS)
    outputs = source_outputs(source, data, tokens, decode_prompts)
    path = write_reference(source, data, tokens, work / "reference.npz", outputs=outputs)
    return {"reference.npz": path} if path else {}


@dataclass(frozen=True)
class BundleJob:
    """What a build (or fit) hands the bundle writer: the chosen variant, its report and gate, and how it was made."""

    variant: OnnxArtifact
    report: dict[str, Any]
    result: GateResult
    profile: Profile
    target: Target
    method: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra_files: dict[str, Path] | None = None
    memory: dict[str, Any] | None = None  # the build's peak RSS vs the fp32 weights (_Stages.memory)


def write_outputs(job: BundleJob, out: Path, opts: BuildOptions) -> Path:
    """The bundle, with build.json (every stage so far; the bundle stage itself is timed by the caller)."""
    from edgekit.bundle import write_bundle

    method = job.method
    settings = {"method": method, "then": opts.then, "target": job.target.name, "profile": job.profile.name,
                "eval_data": str(opts.eval_data) if opts.eval_data else None,
                "calibration": str(opts.calibration) if opts.calibration else None, "bench": opts.bench,
                "distill": opts.distill if method == "distill" else None,
                "rotation": (job.variant.meta.get("export") or job.variant.meta).get("rotation")}
    build_record = {"schema": "edgekit/build@1", "edgekit_version": __version__, "command": opts.command,
                    "settings": settings, "stages": job.stages, **({"memory": job.memory} if job.memory else {})}
    return write_bundle(job.variant, job.report, job.result, out, command=opts.command, archive=opts.archive,
                        method=method if method != "distill" else f"distill+{opts.then or 'fp32'}",
                        build=build_record, extra_files=job.extra_files)

"""`build`: source → export → compress → bench → gate → bundle, with a record of every stage.

Intermediate folders live in a work directory beside OUT and are removed at the end; the bundle is written by
BundleWriter, so OUT is either the previous bundle or the complete new one — never half of either.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgekit import __version__, progress
from edgekit.artifact import OnnxArtifact
from edgekit.errors import EdgekitError
from edgekit.specs import Profile
from edgekit.util import exclusive, peak_rss_mb

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    archive: bool = False
    keep_work: bool = False
    trust_remote_code: bool = False
    command: str = ""
    bench: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)


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
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            with progress.stage(name):
                yield
        except EdgekitError as exc:
            self.records.append({"stage": name, "ok": False, "seconds": round(time.perf_counter() - t0, 2)})
            raise type(exc)(f"build stage '{name}' failed: {exc.message}", hint=exc.hint or STAGE_HINTS.get(name)) from exc
        self.records.append({"stage": name, "ok": True, "seconds": round(time.perf_counter() - t0, 2),
                             "peak_rss_mb": round(peak_rss_mb(), 1)})

    def call(self, name: str, fn: Callable[[], T]) -> T:
        with self.run(name):
            return fn()


def build(source_spec: str, profile: Profile, out: Path | str, options: BuildOptions | None = None) -> BuildResult:
    """Run the whole pipeline and write the bundle at `out` (even when the gate fails; gate.json says so)."""
    from edgekit.catalog import check_method, load_target
    from edgekit.source import load_source

    opts = options or BuildOptions()
    out = Path(out)
    target = load_target(profile.target)
    stages = _Stages()
    with exclusive(out):
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
        try:
            source = stages.call("source", lambda: load_source(source_spec, trust_remote_code=opts.trust_remote_code))
            method = opts.method or profile.method_for(source.task)
            check_method(method, target, where="--method")
            variant, model_source, extra = _make_variant(stages, source, method, target, work, opts)
            report = stages.call("bench", lambda: _bench(variant, source, profile, opts))
            report.update(extra)
            from edgekit.gate import gate as run_gate

            result = stages.call("gate", lambda: run_gate(report, profile))
            report["gate"] = result.to_dict()
            with stages.run("bundle"):
                bundle = _write(variant, model_source, report, result, profile, target, method, out, opts, stages.records)
        finally:
            if opts.keep_work:
                log.info("intermediate folders kept in %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return BuildResult(bundle, result, report, stages.records)


def _make_variant(stages: _Stages, source: Any, method: str, target: Any, work: Path,
                  opts: BuildOptions) -> tuple[OnnxArtifact, Any, dict[str, Any]]:
    """Export (a distilled student first, when asked) and compress; returns the variant and what it came from."""
    from edgekit.export import export

    extra: dict[str, Any] = {}
    model_source = source
    if method == "distill":
        from edgekit.compress.distill import DistillSpec, distill

        spec = DistillSpec(**opts.distill)
        model_source = stages.call("distill", lambda: distill(source, spec, work / "student"))
        extra["distill"] = {"student": model_source.fingerprint, "teacher": source.fingerprint}
    exported = stages.call("export", lambda: export(model_source, target, work / "export"))
    quant = opts.then if method == "distill" else method
    if quant in (None, "fp32"):
        return exported, model_source, extra
    from edgekit.compress import compress

    variant = stages.call("compress", lambda: compress(exported, quant, target, work / "compress"))
    return variant, model_source, extra


def _bench(variant: OnnxArtifact, source: Any, profile: Profile, opts: BuildOptions) -> dict[str, Any]:
    from edgekit.bench import bench

    return dict(bench(variant, source, profile, eval_data=opts.eval_data, **opts.bench))


def _write(variant: OnnxArtifact, model_source: Any, report: dict[str, Any], result: Any, profile: Profile,
           target: Any, method: str, out: Path, opts: BuildOptions, stages: list[dict[str, Any]],
           extra_files: dict[str, Path] | None = None) -> Path:
    from edgekit.bench import write_report
    from edgekit.bundle import BundleWriter

    with BundleWriter(out) as writer:
        for path in [*variant.model_files, *variant.side_files()]:
            writer.add_file(path)
        assert writer.tmp is not None
        write_report(report, writer.tmp)
        writer.add_json("gate.json", result.to_dict())
        writer.add_json("build.json", {"schema": "edgekit/build@1", "stages": stages, "command": opts.command})
        for name, path in (extra_files or {}).items():
            writer.add_file(path, name)
        writer.write_manifest(_manifest(variant, model_source, report, result, profile, target, method, opts))
        return writer.commit(archive=opts.archive)


def _manifest(variant: OnnxArtifact, model_source: Any, report: dict[str, Any], result: Any, profile: Profile,
              target: Any, method: str, opts: BuildOptions) -> dict[str, Any]:
    import onnxruntime as ort

    major, minor = ort.__version__.split(".")[:2]
    gen_path = variant.path / "generation_config.json"
    return {
        "task": variant.task,
        "method": method,
        "settings": variant.meta.get("settings", {}),
        "source": report.get("source") or model_source.fingerprint,
        "target": target.name,
        "profile": {"name": profile.name, "device": profile.device.model_dump(), "workload": profile.workload.model_dump()},
        "gate_passed": bool(result.passed),
        "runtime": {
            "onnxruntime": f">={major}.{minor},<{int(major) + 1}",
            "providers": list(target.execution_providers),
            "threads": profile.workload.threads,
            "session_options": {"intra_op_num_threads": profile.workload.threads, "graph_optimization_level": "all"},
        },
        "io": variant.meta.get("io") or (variant.meta.get("export") or {}).get("io"),
        "generation_config": json.loads(gen_path.read_text()) if gen_path.is_file() else None,
        "edgekit_version": __version__,
        "command": opts.command,
    }

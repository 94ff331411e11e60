"""Device-ready bundles: an explicit-state writer, the manifest, verification and safe archive extraction.

The writer fills a temporary folder beside OUT, hashes every file, writes the manifest last and only then
renames the folder into place — an interrupted build leaves nothing that looks like a bundle, and the previous
bundle at OUT stays untouched until the new one is complete.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__
from edgekit.bundle.archive import safe_extract, write_archive
from edgekit.errors import BundleError, InputError, VerifyFailed
from edgekit.kinds import TASKS  # not specs: the device runner reads manifests without pydantic

if TYPE_CHECKING:
    from edgekit.artifact import OnnxArtifact
    from edgekit.gate import GateResult

log = logging.getLogger(__name__)

MANIFEST = "edgekit.json"
SCHEMA = "edgekit/bundle@1"
__all__ = ["BundleWriter", "State", "safe_extract", "verify_bundle", "write_archive", "write_bundle"]


class State(enum.Enum):
    EMPTY = "empty"
    FILES = "files"
    MANIFEST = "manifest"
    DONE = "done"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class BundleWriter:
    """EMPTY → FILES (add_*) → MANIFEST (write_manifest) → DONE (commit). Leaving early discards everything."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.state = State.EMPTY
        self.tmp: Path | None = None

    def __enter__(self) -> BundleWriter:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        except OSError as exc:
            raise InputError(f"cannot write the bundle next to {self.out}: {exc.strerror}") from exc
        self.state = State.FILES
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state is not State.DONE and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _require(self, state: State) -> Path:
        if self.state is not state or self.tmp is None:
            raise BundleError(f"bundle writer is {self.state.value}, expected {state.value}")
        return self.tmp

    def _dest(self, name: str) -> Path:
        tmp = self._require(State.FILES)
        # A bundle is one flat folder; the manifest name is reserved for write_manifest.
        if not name or name in (".", "..", MANIFEST) or "/" in name or "\\" in name:
            raise BundleError(f"invalid bundle file name '{name}'")
        if (tmp / name).exists():
            raise BundleError(f"'{name}' is already in the bundle")
        return tmp / name

    def add_file(self, src: Path, name: str | None = None) -> None:
        shutil.copyfile(src, self._dest(name or src.name))

    def add_text(self, name: str, text: str) -> None:
        self._dest(name).write_text(text, encoding="utf-8")

    def add_json(self, name: str, data: object) -> None:
        self.add_text(name, json.dumps(data, indent=2, default=str))

    def write_manifest(self, meta: dict[str, Any]) -> dict[str, Any]:
        tmp = self._require(State.FILES)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"schema": SCHEMA, "edgekit_version": __version__, **meta, "files": files}
        # The manifest goes last: its presence marks the folder complete.
        with (tmp / MANIFEST).open("w") as fh:
            json.dump(manifest, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        self.state = State.MANIFEST
        return manifest

    def commit(self, *, archive: bool = False) -> Path:
        tmp = self._require(State.MANIFEST)
        if archive:
            write_archive(tmp, self.out.with_name(self.out.name + ".tar.gz"))
        if self.out.exists():
            if not _exchange(tmp, self.out):
                # No atomic swap on this filesystem: for an instant OUT is absent, never half-written.
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.rename(self.out, old)
                os.rename(tmp, self.out)
                tmp = old
            # The previous bundle now sits at a hidden name; unlink its manifest first so a crash during the
            # cleanup leaves nothing that looks like a bundle.
            (tmp / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, self.out)
        self.state = State.DONE
        return self.out


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return int(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)) == 0


def clean_stale(out: Path) -> list[Path]:
    """Remove what an interrupted (e.g. SIGKILLed) writer of `out` left; call only while holding its lock."""
    removed = []
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*", f".{out.name}.work-*", f".{out.name}.tar.gz.tmp-*"):
        for path in out.parent.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------- the manifest of a built variant


def manifest_meta(artifact: OnnxArtifact, report: dict[str, Any], gate_result: GateResult, *, command: str,
                  method: str | None = None) -> dict[str, Any]:
    """Provenance, runtime and I/O for edgekit.json (files and schema are added by the writer)."""
    import onnxruntime as ort

    from edgekit.catalog import load_target
    from edgekit.runtime import CPU_DISABLED_OPTIMIZERS

    profile = report.get("profile") or {}
    target = load_target(str(profile.get("target") or artifact.meta.get("target")))
    threads = int((profile.get("workload") or {}).get("threads") or 1)
    major, minor = ort.__version__.split(".")[:2]
    gen_path = artifact.path / "generation_config.json"
    record = artifact.meta
    return {
        "task": artifact.task,
        "method": method or artifact.method,
        "settings": _settings(record),
        "source": report.get("source") or record.get("source"),
        "distill": report.get("distill"),
        "target": target.name,
        "profile": {k: profile.get(k) for k in ("name", "device", "workload")},
        "gate_passed": bool(gate_result.passed),
        "gate_failed": [r.name for r in gate_result.failed],
        # Built and tested with this onnxruntime; the next major may change operators or fusions.
        "runtime": {
            "onnxruntime": f">={major}.{minor},<{int(major) + 1}",
            "onnxruntime_built_with": ort.__version__,
            "providers": list(target.execution_providers),
            "threads": threads,
            "session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
                                "execution_mode": "sequential", "graph_optimization_level": "all",
                                "disabled_optimizers_on_cpu": list(CPU_DISABLED_OPTIMIZERS)},
        },
        "io": record.get("io") or (record.get("export") or {}).get("io"),
        "with_past": record.get("with_past", (record.get("export") or {}).get("with_past")),
        "generation_config": json.loads(gen_path.read_text()) if gen_path.is_file() else None,
        "tokenizer": tokenizer_entry(artifact.path, report),
        "source_checks": _source_checks(report),
        "command": command,
    }


def tokenizer_entry(folder: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped tokenizer.json's sha256 (`edgekit run` refuses another) and how it was built."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    checked = (((report.get("source") or {}).get("sanity") or {}).get("tokenizer")) or {}
    sha = sha256_file(path)
    if checked.get("sha256") not in (None, sha):
        log.warning("the bundled tokenizer.json differs from the source tokenizer that was checked and benched with")
    return {"file": path.name, "sha256": sha, "built_by": checked.get("built_by", "shipped with the source folder"),
            "same_as_checked_source": checked.get("sha256") == sha if checked else None}


def _source_checks(report: dict[str, Any]) -> dict[str, Any] | None:
    sanity = (report.get("source") or {}).get("sanity")
    if not sanity:
        return None
    return {"passed": sanity.get("passed"), "failed": sanity.get("failed"), "override": sanity.get("override")}


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    """What was done to get this graph: the compress settings (+ calibration, fallback) and the export's."""
    export = record.get("export") or record
    out = {k: record[k] for k in ("settings", "calibration", "fallback") if record.get(k) is not None}
    out["export"] = {k: export[k] for k in ("optimization", "rotation", "versions", "external_data") if k in export}
    return out


def write_bundle(artifact: OnnxArtifact, report: dict[str, Any], gate_result: GateResult, out: Path | str, *, command: str,
                 archive: bool = False, method: str | None = None, build: dict[str, Any] | None = None,
                 extra_files: dict[str, Path] | None = None) -> Path:
    """Model files + side files + report (json/md/png) + gate.json [+ build.json] → a verified-layout bundle."""
    from edgekit.bench import write_report

    with BundleWriter(out) as writer:
        for path in [*artifact.model_files, *artifact.side_files()]:
            writer.add_file(path)
        write_report(report, writer._require(State.FILES))
        writer.add_json("gate.json", gate_result.to_dict())
        if build is not None:
            writer.add_json("build.json", build)
        for name, path in (extra_files or {}).items():
            writer.add_file(path, name)
        meta = manifest_meta(artifact, report, gate_result, command=command, method=method)
        meta["runtimes"] = _add_genai_config(writer, artifact, meta)
        writer.write_manifest(meta)
        return writer.commit(archive=archive)


def _add_genai_config(writer: BundleWriter, artifact: OnnxArtifact, meta: dict[str, Any]) -> dict[str, Any]:
    """genai_config.json where onnxruntime-genai can drive the graph; the manifest's `runtimes` either way."""
    from edgekit.bundle.genai import GENAI_FILE, runtimes_for

    runtime = meta["runtime"]
    runtimes, genai = runtimes_for(artifact.path, artifact.task, providers=runtime["providers"],
                                   threads=runtime["threads"], model_file=artifact.model_file.name)
    if genai is not None:
        writer.add_json(GENAI_FILE, genai)
    return runtimes


# ---------------------------------------------------------------- reading and verifying


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        # Bad input, not a damaged bundle: exit 2 like `gate` on a missing report. A bundle is only ever renamed
        # into place complete, so a folder without a manifest was never one.
        raise InputError(f"{folder}: not an edgekit bundle (no {MANIFEST}); pass the folder `edgekit build -o` wrote")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyFailed(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise VerifyFailed(f"{path}: manifest schema is not {SCHEMA}")
    if manifest.get("task") not in TASKS:
        raise VerifyFailed(f"{path}: manifest 'task' is {manifest.get('task')!r}, expected one of {', '.join(TASKS)}")
    if not isinstance(manifest.get("edgekit_version"), str):
        raise VerifyFailed(f"{path}: manifest has no 'edgekit_version'")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int) for v in files.values()
    ):
        raise VerifyFailed(f"{path}: manifest 'files' must map names to {{sha256, bytes}}")
    for name in files:
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise VerifyFailed(f"{path}: manifest names an invalid file '{name}'")
    return manifest


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    files: dict[str, Any] = manifest["files"]
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    for name in sorted(set(files) - present):
        raise VerifyFailed(f"{folder}: file '{name}' is missing")
    for name in sorted(present - set(files)):
        raise VerifyFailed(f"{folder}: extra file '{name}' is not in the manifest")
    for name, info in sorted(files.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise VerifyFailed(f"{folder}: '{name}' is not a regular file")
        if path.stat().st_size != info["bytes"]:
            raise VerifyFailed(f"{folder}: file '{name}' changed ({path.stat().st_size} bytes, manifest says {info['bytes']})")
        if sha256_file(path) != info["sha256"]:
            raise VerifyFailed(f"{folder}: file '{name}' changed (sha256 does not match the manifest)")


def smoke_test(folder: Path) -> dict[str, Any]:
    """Load the session and run one tiny inference through the same runtime a device uses."""
    import numpy as np

    from edgekit.runtime import Decoder, Model

    try:
        model = Model(folder)
        if model.task == "text-generation":
            decoder = Decoder(model.session)
            ids = model.encode("Hello") or [0]
            # NaN logits still argmax to a token: check the numbers, then that the KV-cache loop runs.
            ok = bool(np.isfinite(decoder.logits(ids)).all())
            sample: Any = decoder.generate(ids, 2).tokens
        else:
            out = model.embed_or_classify(["hello world"])
            ok = bool(np.isfinite(out).all())
            sample = list(out.shape)
    except Exception as exc:
        raise VerifyFailed(f"{folder}: the model does not run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not ok:
        raise VerifyFailed(f"{folder}: the model ran but produced no usable output")
    return {"task": model.task, "sample": sample}


def check_genai(folder: Path, manifest: dict[str, Any]) -> str:
    from edgekit.bundle.genai import check_bundle

    return check_bundle(folder, manifest)


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Verify a bundle folder or .tar.gz archive; raise VerifyFailed naming the first problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such bundle: {path}")
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as scratch:
        folder = safe_extract(path, Path(scratch)) if path.is_file() else path
        manifest = read_manifest(folder)
        check_files(folder, manifest)
        genai = check_genai(folder, manifest)
        run = smoke_test(folder)
    # Integrity, not fitness: a bundle that failed its gate verifies, and says that it failed.
    return {"bundle": str(path), "ok": True, "files": len(manifest["files"]), "inference": run, "genai": genai,
            "method": manifest.get("method"), "profile": (manifest.get("profile") or {}).get("name"),
            "gate_passed": manifest.get("gate_passed"), "gate_failed": manifest.get("gate_failed") or []}

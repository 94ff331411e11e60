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
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.errors import BundleError, InputError, VerifyFailed

log = logging.getLogger(__name__)

MANIFEST = "edgekit.json"
SCHEMA = "edgekit/bundle@1"


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

    def add_file(self, src: Path, name: str | None = None) -> None:
        tmp = self._require(State.FILES)
        shutil.copyfile(src, tmp / (name or src.name))

    def add_text(self, name: str, text: str) -> None:
        (self._require(State.FILES) / name).write_text(text)

    def add_json(self, name: str, data: Any) -> None:
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
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
            os.rename(tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, self.out)
        self.state = State.DONE
        return self.out


def write_archive(folder: Path, dest: Path) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp_name, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=f"{dest.name.removesuffix('.tar.gz')}/{path.name}", recursive=False)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


# ---------------------------------------------------------------- reading and verifying


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive; reject absolute paths, `..`, links and device files. Returns the bundle folder."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tar:` below
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute():
                raise VerifyFailed(f"{archive}: member '{m.name}' has an absolute path")
            if ".." in parts:
                raise VerifyFailed(f"{archive}: member '{m.name}' escapes the archive with '..'")
            if m.issym() or m.islnk():
                raise VerifyFailed(f"{archive}: member '{m.name}' is a link (to '{m.linkname}'); bundles hold plain files")
            if not (m.isfile() or m.isdir()):
                raise VerifyFailed(f"{archive}: member '{m.name}' is not a regular file")
        tar.extractall(dest, filter="data")
    manifests = sorted(dest.rglob(MANIFEST))
    if not manifests:
        raise VerifyFailed(f"{archive}: no {MANIFEST} inside; not an edgekit bundle")
    return manifests[0].parent


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise VerifyFailed(f"{folder}: no {MANIFEST}; not an edgekit bundle (or an interrupted one)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyFailed(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise VerifyFailed(f"{path}: manifest schema is not {SCHEMA}")
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
            result = Decoder(model.session).generate(model.encode("Hello") or [0], 2)
            ok = bool(result.tokens)
            sample: Any = result.tokens
        else:
            out = model.embed_or_classify(["hello world"])
            ok = bool(np.isfinite(out).all())
            sample = list(out.shape)
    except Exception as exc:
        raise VerifyFailed(f"{folder}: the model does not run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not ok:
        raise VerifyFailed(f"{folder}: the model ran but produced no usable output")
    return {"task": model.task, "sample": sample}


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Verify a bundle folder or .tar.gz archive; raise VerifyFailed naming the first problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such bundle: {path}")
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as scratch:
        folder = safe_extract(path, Path(scratch)) if path.is_file() else path
        manifest = read_manifest(folder)
        check_files(folder, manifest)
        run = smoke_test(folder)
    return {"bundle": str(path), "ok": True, "files": len(manifest["files"]), "inference": run,
            "method": manifest.get("method"), "profile": (manifest.get("profile") or {}).get("name")}

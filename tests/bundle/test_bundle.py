from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgekit.bundle import MANIFEST, BundleWriter, State, clean_stale, verify_bundle, write_archive
from edgekit.errors import BundleError, InputError, VerifyFailed
from tests.conftest import run_cli


@pytest.fixture
def model_dir(tiny_onnx) -> Path:  # type: ignore[no-untyped-def]
    return Path(tiny_onnx("llama").path)


def make_bundle(model_dir: Path, out: Path, archive: bool = False) -> Path:
    with BundleWriter(out) as w:
        for p in sorted(model_dir.iterdir()):
            w.add_file(p)
        w.add_json("report.json", {"schema": "edgekit/report@1"})
        task = json.loads((model_dir / "export.json").read_text())["task"]
        w.write_manifest({"task": task, "method": "fp32", "runtime": {"threads": 1}})
        return w.commit(archive=archive)


def test_round_trip_and_states(model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle", archive=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["schema"] == "edgekit/bundle@1" and "model.onnx" in manifest["files"]
    assert verify_bundle(out)["ok"]
    assert verify_bundle(tmp_path / "bundle.tar.gz")["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.tar.gz"]
    w = BundleWriter(tmp_path / "other")
    assert w.state is State.EMPTY
    with w, pytest.raises(BundleError):
        w.commit()  # no manifest yet
    assert not (tmp_path / "other").exists()


def test_abandoned_writer_leaves_nothing_and_keeps_previous(model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle")
    before = (out / MANIFEST).read_text()
    with pytest.raises(RuntimeError), BundleWriter(out) as w:
        w.add_file(model_dir / "model.onnx")
        raise RuntimeError("disk full, say")
    assert (out / MANIFEST).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.parametrize("damage", ["flip", "missing", "extra", "lying-manifest", "truncate"])
def test_verify_names_the_damaged_file(damage: str, model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle")
    target = out / "model.onnx"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        target.write_bytes(bytes(raw))
    elif damage == "missing":
        (out / "tokenizer.json").unlink()
    elif damage == "extra":
        (out / "payload.onnx").write_bytes(b"x")
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    else:
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["files"]["config.json"]["sha256"] = "0" * 64
        (out / MANIFEST).write_text(json.dumps(manifest))
    name = {"flip": "model.onnx", "missing": "tokenizer.json", "extra": "payload.onnx", "truncate": "model.onnx",
            "lying-manifest": "config.json"}[damage]
    with pytest.raises(VerifyFailed, match=name):
        verify_bundle(out)
    res = run_cli("verify", str(out))
    assert res.returncode == 1 and name in res.stderr and "Traceback" not in res.stderr


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo({"dotdot": "b/../../evil.txt", "absolute": "/tmp/edgekit-evil.txt"}.get(kind, "b/link"))
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            data = b"pwned"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _stray_tar(path: Path, model_dir: Path, kind: str) -> None:
    """A good bundle plus something a verifier must not overlook."""
    bundle = make_bundle(model_dir, path.parent / "src")
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(bundle.iterdir()):
            tar.add(p, arcname=f"b/{p.name}")
        if kind == "stray-folder":
            tar.add(bundle / "config.json", arcname="other/payload.onnx")
        elif kind == "nested":
            tar.add(bundle / "config.json", arcname="b/sub/payload.onnx")
        else:
            info = tarfile.TarInfo("b/fifo")
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_hostile_archives_rejected(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    _evil_tar(archive, kind)
    with pytest.raises(VerifyFailed):
        verify_bundle(archive)
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/edgekit-evil.txt").exists()
    res = run_cli("verify", str(archive))
    assert res.returncode == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["stray-folder", "nested", "fifo"])
def test_archive_with_hidden_extras_rejected(kind: str, model_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    _stray_tar(archive, model_dir, kind)
    with pytest.raises(VerifyFailed, match={"stray-folder": "b, other", "nested": "payload.onnx", "fifo": "special"}[kind]):
        verify_bundle(archive)


def test_writer_refuses_bad_names_and_bad_manifests(model_dir: Path, tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "w") as w:
        for name in (MANIFEST, "../x", "a/b", ""):
            with pytest.raises(BundleError):
                w.add_text(name, "x")
        w.add_text("a.txt", "x")
        with pytest.raises(BundleError, match="already"):
            w.add_text("a.txt", "y")
    out = make_bundle(model_dir, tmp_path / "bundle")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["task"] = "image-generation"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(VerifyFailed, match="task"):
        verify_bundle(out)


def test_replacing_a_bundle_swaps_it_whole(model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle")
    with BundleWriter(out) as w:
        for p in sorted(model_dir.iterdir()):
            w.add_file(p)
        w.add_text("note.txt", "second build")
        w.write_manifest({"task": "text-generation"})
        assert "note.txt" not in json.loads((out / MANIFEST).read_text())["files"]  # old one intact until commit
        w.commit()
    assert "note.txt" in json.loads((out / MANIFEST).read_text())["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the previous bundle is gone, not hidden beside
    assert verify_bundle(out)["ok"]


def test_clean_stale_removes_leftovers_only(tmp_path: Path) -> None:
    out = tmp_path / "b"
    for name in (".b.tmp-1", ".b.work-2", ".b.old-3", ".bb.tmp-4", "b"):
        (tmp_path / name).mkdir()
    removed = {p.name for p in clean_stale(out)}
    assert removed == {".b.tmp-1", ".b.work-2", ".b.old-3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bb.tmp-4", "b"]


def test_archive_of_a_good_bundle_verifies_via_cli(model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle")
    archive = write_archive(out, tmp_path / "copy.tar.gz")
    res = run_cli("verify", str(archive), "--json")
    assert res.returncode == 0, res.stderr and json.loads(res.stdout)["ok"]


WRITER = """
import sys
from pathlib import Path
from edgekit.bundle import BundleWriter
src, out = Path(sys.argv[1]), Path(sys.argv[2])
with BundleWriter(out) as w:
    for p in sorted(src.iterdir()):
        w.add_file(p)
    print("writing", flush=True)
    sys.stdin.readline()  # held mid-write until the test kills it: no timing involved
    w.write_manifest({})
    w.commit()
"""


def test_sigkill_mid_write_leaves_no_bundle(model_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(model_dir, tmp_path / "bundle")
    before = (out / MANIFEST).read_text()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(model_dir), str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / MANIFEST).read_text() == before  # the previous bundle is untouched
    # What SIGKILL leaves is a hidden temp folder without a manifest: never mistaken for a bundle.
    leftovers = [p for p in tmp_path.iterdir() if p.name != "bundle"]
    assert all(p.name.startswith(".bundle.tmp-") and not (p / MANIFEST).exists() for p in leftovers)
    with pytest.raises(InputError, match=r"not an edgekit bundle \(no edgekit\.json\)"):
        verify_bundle(leftovers[0])

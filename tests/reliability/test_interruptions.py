"""Interruptions and a full disk: never a partial result, the previous output untouched, a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.helpers import assert_clean_failure

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "edgekit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _no_partial(folder: Path, out: Path) -> None:
    assert not out.exists(), f"{out} exists after an interrupted run"
    for p in folder.iterdir():
        assert not (p / "model.onnx").exists() or p.name.startswith("."), p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_export(sig: signal.Signals, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x"
    proc = _spawn("export", str(tiny_model("phi3")), "--target", "x86-avx2", "-o", str(out))
    # Signal once the export is under way (its temp folder exists), not at a fixed time: on a loaded host a fixed
    # delay can land in interpreter start-up, before edgekit's handler exists.
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".x.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    _no_partial(tmp_path, out)
    if sig == signal.SIGINT and proc.returncode != 0:
        assert proc.returncode == 130 and "Traceback" not in err
        assert list(tmp_path.iterdir()) == []


def test_interrupted_build_keeps_previous_bundle(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    first = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    assert first.returncode == 0, first.stderr
    manifest = (out / "edgekit.json").read_text()
    proc = _spawn("build", str(tiny_model("qwen2")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    time.sleep(4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "edgekit.json").read_text() == manifest
    assert run_cli("verify", str(out)).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MB tmpfs: room for a tokenizer, not for a model and its bundle."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_build(tiny_model, tiny_disk: Path) -> None:  # type: ignore[no-untyped-def]
    out = tiny_disk / "bundle"
    res = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    assert_clean_failure(res, 2, "space", out=out)
    assert [p.name for p in tiny_disk.iterdir()] == []


def test_full_disk_export(tiny_model, tiny_disk: Path) -> None:  # type: ignore[no-untyped-def]
    (tiny_disk / "ballast").write_bytes(b"\0" * 1_000_000)
    out = tiny_disk / "x"
    res = run_cli("export", str(tiny_model("llama")), "--target", "x86-avx2", "-o", str(out))
    assert_clean_failure(res, 2, "space", out=out)
    assert [p.name for p in tiny_disk.iterdir()] == ["ballast"]

"""Interruptions and a full disk: never a partial result, the previous output untouched, a clear message."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.helpers import Spawned, assert_clean_failure

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def _no_partial(folder: Path, out: Path) -> None:
    assert not out.exists(), f"{out} exists after an interrupted run"
    for p in folder.iterdir():
        assert not (p / "model.onnx").exists() or p.name.startswith("."), p


# States an export passes through, as its progress lines report them: a Ctrl-C must give exit 130 in each, including
# while torch's and onnxruntime's C extensions import (where a KeyboardInterrupt used to leave as exit -2).
EXPORT_STATES = ("export: onnx graph", "export: parity (raw graph)", "export: optimize", "export: parity (optimized")


@pytest.mark.parametrize("state", EXPORT_STATES)
def test_sigint_during_export_exits_130(state: str, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x"
    # The traced graph: the fused writer's exports have no optimize stage (and Phi-3 now gets the fused one).
    run = Spawned("export", str(tiny_model("phi3")), "--target", "x86-avx2", "-o", str(out), "--graph", "optimum")
    run.wait_for_line(f"{state}")
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish()
    assert code == 130, f"exit {code}, wanted 130:\n{err}"
    assert "edgekit: interrupted" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_export_leaves_no_result(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x"
    run = Spawned("export", str(tiny_model("phi3")), "--target", "x86-avx2", "-o", str(out))
    run.wait_for_line("export: parity (raw graph): started")  # the graph is on disk in the temporary folder
    run.proc.send_signal(signal.SIGKILL)
    run.finish()
    _no_partial(tmp_path, out)


def test_interrupted_build_keeps_previous_bundle(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    first = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    assert first.returncode == 0, first.stderr
    manifest = (out / "edgekit.json").read_text()
    run = Spawned("build", str(tiny_model("qwen2")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    run.wait_for_line("bench: fidelity")
    run.proc.send_signal(signal.SIGKILL)
    run.finish()
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

"""Release hygiene, as a CI job uses edgekit: gate never edits a bundle, clear exit codes, progress in logs,
and the wheel works outside this checkout (no gensim, no repo files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_exit_follows_gate, run_cli

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


@pytest.fixture(scope="module")
def bundle(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("release") / "bundle"
    res = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST,
                  env={"EDGEKIT_PROGRESS_INTERVAL": "0.5"})
    assert res.returncode == 0, res.stderr
    (out.parent / "build.stderr").write_text(res.stderr)
    return out


def test_gate_with_junit_leaves_the_bundle_verifiable(bundle: Path, tmp_path: Path) -> None:
    gate_json = (bundle / "gate.json").read_bytes()
    res = run_cli("gate", str(bundle / "report.json"), "--profile", "local", "--junit", str(tmp_path / "g.xml"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "g.xml").read_text().startswith("<?xml")
    assert (bundle / "gate.json").read_bytes() == gate_json
    assert run_cli("verify", str(bundle)).returncode == 0
    # Outside a bundle, gate.json still lands beside the report as before.
    report = tmp_path / "report.json"
    report.write_bytes((bundle / "report.json").read_bytes())
    assert run_cli("gate", str(report), "--profile", "local").returncode == 0
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is True


def test_gate_writes_into_a_bundle_only_when_told(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(bundle), str(copy)], check=True)
    res = run_cli("gate", str(copy / "report.json"), "--profile", "x86-laptop", "-o", str(copy / "gate.json"))
    assert_exit_follows_gate(res, copy / "gate.json")
    verify = run_cli("verify", str(copy))
    assert verify.returncode == 1 and "gate.json" in verify.stderr  # the explicit -o did write there


def test_verify_on_a_folder_that_is_not_a_bundle_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    res = run_cli("verify", str(tmp_path))
    assert res.returncode == 2 and "not an edgekit bundle" in res.stderr and "Traceback" not in res.stderr
    assert run_cli("verify", str(tmp_path / "missing")).returncode == 2
    assert run_cli("gate", str(tmp_path / "missing.json"), "--profile", "local").returncode == 2


def test_build_logs_periodic_progress_when_not_a_terminal(bundle: Path) -> None:
    err = (bundle.parent / "build.stderr").read_text()
    lines = [ln for ln in err.splitlines() if ln.startswith("[progress] ")]
    for stage in ("export", "bench", "bundle"):
        assert any(f"] {stage}: started" in ln for ln in lines), err
        assert any(f"] {stage}: done in " in ln for ln in lines), err
    # The heartbeat (every EDGEKIT_PROGRESS_INTERVAL s here, 30 s by default) says elapsed time and an ETA.
    beats = [ln for ln in lines if "elapsed" in ln or "<" in ln]
    assert beats, err


def test_build_calibration_file(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "int8-static",
                      "--calibration", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "b"), *FAST)
    assert missing.returncode == 2 and "calibration file not found" in missing.stderr
    assert not (tmp_path / "b").exists()
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(f"Sample sentence number {i} about the weather and the sea." for i in range(40)))
    out = tmp_path / "b"
    res = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "int8-static",
                  "--calibration", str(calib), "-o", str(out), *FAST)
    assert_exit_follows_gate(res, out / "gate.json")
    settings = json.loads((out / "build.json").read_text())["settings"]
    assert settings["calibration"] == str(calib)


HIDE_GENSIM = """
class _NoGensim:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split('.')[0] == 'gensim':
            raise ModuleNotFoundError('No module named gensim', name=name)
sys.meta_path.insert(0, _NoGensim)
"""
PROBE = """
import edgekit
print(edgekit.__file__)
try:
    import gensim
except ModuleNotFoundError:
    print("no-gensim")
"""


def _build_wheel(dist: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(dist), str(REPO)], capture_output=True, text=True)
    if res.returncode != 0 and "hatchling" in res.stderr:
        pytest.skip("hatchling is not installed in the test environment")
    assert res.returncode == 0, res.stderr
    return next(dist.glob("edgekit-*.whl"))


def test_wheel_works_outside_the_checkout(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The wheel carries its corpus, profiles and targets; a fresh venv without gensim builds a quantized bundle,
    with edgekit and its data from the wheel and nothing from this checkout."""
    wheel = _build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgekit/corpus/eval/01-pride-and-prejudice.txt" in names and "edgekit/corpus/SOURCES.md" in names
    assert "edgekit/_data/profiles/raspberry-pi-5.yaml" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The pinned heavy dependencies come from this environment's site-packages, after the venv's own (so the
    # wheel's edgekit wins; that folder's editable-install hook is a .pth there, which Python does not run), and
    # gensim is made unimportable, as on a machine that never installed it.
    import sysconfig

    (Path(site) / "zz_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n" + "import sys; exec(" + repr(HIDE_GENSIM) + ")\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_DEBUG", "PYTHONPATH")}
    probe = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(Path(site) / "edgekit" / "__init__.py"), "no-gensim"], probe.stdout
    out = tmp_path / "bundle"
    res = subprocess.run([str(venv / "bin" / "edgekit"), "build", str(tiny_model("llama")), "--profile", "local",
                          "--method", "int8-weight", "-o", str(out), *FAST], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=900)
    assert_exit_follows_gate(res, out / "gate.json")  # a tiny random model's int8 gate is a coin flip
    build = json.loads((out / "build.json").read_text())
    assert build["settings"]["calibration"] is None
    assert (out / "edgekit.json").is_file()


def test_progress_line_estimates_eta_from_the_last_build() -> None:
    import re
    import time

    from edgekit.progress import ActiveStage

    stepless = ActiveStage("[2/6] export", None, started=time.perf_counter() - 30, expected=120)
    assert re.search(r"25% 00:30 elapsed, ETA 01:(29|30) \(from the last build\)", stepless.line()), stepless.line()
    assert "ETA unknown" in ActiveStage("[2/6] export", None, started=time.perf_counter() - 30).line()
    stepped = ActiveStage("bench: fidelity", 8, started=time.perf_counter() - 30, done=2).line()
    assert "25%" in stepped and re.search(r"01:(29|30)", stepped), stepped  # tqdm: 2 of 8 windows in 30 s, 90 s to go

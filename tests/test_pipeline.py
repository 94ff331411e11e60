from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def _impossible_profile(tmp_path: Path) -> Path:
    text = (REPO / "profiles" / "local.yaml").read_text().replace("model_size_mb: 1000", "model_size_mb: 0.001")
    path = tmp_path / "tiny-budget.yaml"
    path.write_text(text)
    return path


def test_build_generation_bundle_end_to_end(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bundle"
    res = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp32", "-o", str(out),
                  "--archive", "--json", *FAST)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["passed"] and [s["stage"] for s in summary["stages"]] == ["source", "export", "bench", "gate", "bundle"]
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["method"] == "fp32" and manifest["gate_passed"] is True
    assert manifest["command"].startswith("edgekit build ") and "--method fp32" in manifest["command"]
    assert manifest["source"]["sha256"] and manifest["runtime"]["onnxruntime"].startswith(">=")
    for name in ("model.onnx", "tokenizer.json", "report.json", "report.md", "gate.json", "build.json"):
        assert name in manifest["files"], name
    assert (tmp_path / "bundle.tar.gz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.tar.gz"]  # work dirs removed
    assert run_cli("verify", str(out)).returncode == 0
    assert run_cli("verify", str(tmp_path / "bundle.tar.gz")).returncode == 0


def test_build_embeddings(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "emb"
    res = run_cli("build", str(tiny_model("bert-emb")), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST)
    assert res.returncode == 0, res.stderr
    gate = json.loads((out / "gate.json").read_text())
    statuses = {r["name"]: r["status"] for r in gate["rules"]}
    assert statuses["fidelity.cosine_min"] == "pass" and statuses["fidelity.top1_agreement_min"] == "n/a"


def test_impossible_budget_exits_1_naming_rule(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    res = run_cli("build", str(tiny_model("llama")), "--profile", str(_impossible_profile(tmp_path)), "--method", "fp32",
                  "-o", str(out), *FAST)
    assert res.returncode == 1
    assert "budgets.model_size_mb" in res.stderr and "Traceback" not in res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("status"))
    assert lines[header + 2].startswith("FAIL")  # failing rule first in the table
    assert json.loads((out / "edgekit.json").read_text())["gate_passed"] is False


def test_unsupported_method_for_target(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("build", str(tiny_model("llama")), "--profile", "local", "--method", "fp16", "-o", str(tmp_path / "b"))
    assert res.returncode == 2 and "fp16" in res.stderr and not (tmp_path / "b").exists()


def _spawn_build(src: Path, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "edgekit", "build", str(src), "--profile", "local", "--method",
                             "fp32", "-o", str(out), *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_sigkill_mid_build_leaves_no_bundle(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    proc = _spawn_build(tiny_model("llama"), out)
    time.sleep(4)  # inside export or bench
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert not any((p / "edgekit.json").exists() for p in tmp_path.iterdir())


def test_sigint_mid_build_is_clean(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    proc = _spawn_build(tiny_model("llama"), out)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_two_builds_to_one_output(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    first = _spawn_build(tiny_model("llama"), out)
    time.sleep(1.5)
    second = _spawn_build(tiny_model("llama"), out)
    _, err2 = second.communicate(timeout=300)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and "another edgekit process is writing" in err2
    assert run_cli("verify", str(out)).returncode == 0


@pytest.mark.slow
def test_make_demo_build_smollm2_pi5(tmp_path: Path) -> None:
    out = tmp_path / "smollm2-pi5"
    res = run_cli("build", "example:smollm2-135m", "--profile", "raspberry-pi-5", "-o", str(out), timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    run = run_cli("run", str(out), "The capital of France is", "--max-new-tokens", "12")
    assert "Paris" in run.stdout

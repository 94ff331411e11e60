"""The emulated target-ISA check: the real SmolLM2 arm64 bundle on onnxruntime's aarch64 wheel under qemu-user
(slow; skipped with the reason when the root from `make emulator` is absent), and its plumbing on x86 (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.errors import InputError
from tests.conftest import run_cli

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def _root_or_skip() -> None:
    from edgekit.device.root import find_root

    try:
        find_root()
    except InputError as exc:
        pytest.skip(f"no arm64 emulator: {exc.one_line()}")


def test_arm_build_without_emulator_says_so(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    res = run_cli("build", str(tiny_model("llama")), "--profile", "raspberry-pi-5", "-o", str(out), *FAST,
                  env={"EDGEKIT_ARM64_ROOT": str(tmp_path / "none")})
    assert res.returncode in (0, 1), res.stderr
    report = json.loads((out / "report.json").read_text())
    assert "no prepared arm64 root" in report["target_isa"]["skipped"]
    assert any("host's kernels only" in w for w in report["warnings"])
    assert "host's kernels only" in res.stderr  # said on the terminal too, not only in the file


@pytest.mark.slow
def test_emulated_check_on_smollm2_int8_pi5(tmp_path: Path) -> None:
    _root_or_skip()
    out = tmp_path / "pi5"
    res = run_cli("build", "example:smollm2-135m", "--profile", "raspberry-pi-5", "-o", str(out), "--max-time", "2",
                  timeout=3000)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((out / "report.json").read_text())
    isa = report["target_isa"]
    assert report["fidelity"]["measured_on"].startswith("aarch64 cortex-a76, qemu-user")
    assert "qemu-user" in isa["measured_on"] and "not a device figure" in isa["speed"]
    # every position of the default 2,048-token eval (8 windows of 256) ran on the ARM kernels
    assert isa["isa_agreement"]["positions"] == report["fidelity"]["kld_mean"]["n"] == 2040
    assert 0.8 < isa["isa_agreement"]["argmax_agreement"] <= 1.0
    assert isa["isa_agreement"]["greedy"]["prompts"] == 3
    # the ARM kernels and the host's give close, not identical, fidelity vs the same source reference
    arm, host = report["fidelity"], isa["host"]["fidelity"]
    assert abs(arm["kld_mean"]["value"] - host["kld_mean"]["value"]) < 0.01
    assert report["fidelity_host"]["kld_mean"]["value"] > 0
    assert json.loads((out / "gate.json").read_text())["passed"]
    assert run_cli("verify", str(out)).returncode == 0

"""The build's peak RSS for SmolLM2, recorded in build.json, against its fp32 weight bytes (issue 20: <= 3x).

Where it stood: 4.06 GB (7.9x) with the export holding four copies of the weights and the compress stage two
fp32 graphs and two sessions at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.pipeline import SCOPE
from tests.conftest import run_cli

SMOLLM2_PARAMETERS = 134_515_008
# The target: 3x (1,539 MiB). Stages run in spawned workers (edgekit.stageproc): a stage's peak is the light
# build process (~49 MiB) plus its worker. 2026-12-01, 2-core AVX-512 EPYC shared with other builds, source outputs
# not cached: 1,322 MiB (2.58x; compress 1,322, export 1,219, bench 1,088, source 1,061). Before, in one process:
# 1,867-2,036 MiB (3.64-3.97x).
BOUND = 3.0


@pytest.mark.slow
def test_smollm2_build_peak_rss_within_3x_fp32_weights(tmp_path: Path) -> None:
    out = tmp_path / "smol"
    res = run_cli("build", "example:smollm2-135m", "--profile", "local", "--method", "int8-weight", "-o", str(out),
                  timeout=1800)
    assert res.returncode in (0, 1), res.stderr  # 1: a gate rule failed (speed on a loaded host); memory is measured
    record = json.loads((out / "build.json").read_text())
    memory = record["memory"]
    assert memory["scope"] == SCOPE and memory["fp32_weights_mb"] == pytest.approx(SMOLLM2_PARAMETERS * 4 / 2**20, rel=1e-3)
    stages = {s["stage"]: s["peak_rss_mb"] for s in record["stages"]}
    assert memory["ratio_to_fp32_weights"] <= BOUND, f"peak {memory['peak_rss_mb']} MiB in {memory['peak_stage']}: {stages}"

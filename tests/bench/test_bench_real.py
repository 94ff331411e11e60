"""bench on the real SmolLM2-135M fp32 export (slow: an export and two model loads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.bench import bench
from edgekit.catalog import load_profile, load_target
from edgekit.export import export
from edgekit.source import load_source


@pytest.mark.slow
def test_smollm2_fp32_export_is_faithful_and_measured(tmp_path: Path) -> None:
    source = load_source("example:smollm2-135m")
    variant = export(source, load_target("x86-avx2"), tmp_path / "fp32")
    report = bench(variant, source, load_profile("local"), eval_tokens=256, max_time_s=5)
    fid = report["fidelity"]
    assert fid["top1_agreement"]["value"] >= 0.99 and fid["kld_mean"]["value"] < 1e-3
    assert fid["ppl_ratio"]["ci95_low"] <= 1.0 + 1e-3 and fid["ppl_ratio"]["value"] == pytest.approx(1.0, abs=1e-3)
    perf = report["performance"]
    assert perf["variant"]["decode_tokens_per_s"]["value"] > 0 and perf["source"]["decode_tokens_per_s"]["value"] > 0
    assert perf["variant"]["peak_rss_mb"]["value"] < perf["variant"]["model_size_mb"]["value"] * 3

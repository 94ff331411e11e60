"""Real models (slow): SmolLM2-135M keeps its answers under 8-bit weight-only, dynamic int8's collapse is caught,
MiniLM keeps its embeddings under dynamic int8."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.artifact import OnnxArtifact
from edgekit.catalog import load_target
from edgekit.compress import compress
from edgekit.export import export
from edgekit.source import load_source

pytestmark = pytest.mark.slow
AVX2 = load_target("x86-avx2")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> OnnxArtifact:
    return export(load_source("example:smollm2-135m"), AVX2, tmp_path_factory.mktemp("smol") / "fp32", parity=False)


def test_smollm2_int8_weight_keeps_top1_and_shrinks(smollm2: OnnxArtifact, tmp_path: Path) -> None:
    out = compress(smollm2, "int8-weight", AVX2, tmp_path / "q", calibration_samples=8)
    assert out.meta["check"]["top1_agreement"] >= 0.93  # 0.953 on 512 held-out tokens (benchmarks/)
    assert "accuracy_warning" not in out.meta
    assert out.size_mb < 0.35 * smollm2.size_mb


def test_smollm2_dynamic_int8_collapse_is_caught(smollm2: OnnxArtifact, tmp_path: Path) -> None:
    out = compress(smollm2, "int8-dynamic", AVX2, tmp_path / "q", calibration_samples=8)
    assert out.meta["check"]["top1_agreement"] < 0.9
    assert "top1_agreement" in out.meta["accuracy_warning"]


def test_minilm_dynamic_int8_cosine(tmp_path: Path) -> None:
    parent = export(load_source("example:minilm-l6"), AVX2, tmp_path / "fp32", parity=False)
    out = compress(parent, "int8-dynamic", AVX2, tmp_path / "q", calibration_samples=16)
    assert out.meta["check"]["cosine_mean"] >= 0.99
    # The 47 MB word embedding stays float, so the folder shrinks to ~0.65x, not 0.3x.
    assert out.size_mb < 0.7 * parent.size_mb
    # 6 layers x (attention output, FFN in, FFN out) MatMuls + 6 fused Attentions as QAttention.
    assert out.meta["nodes"]["counts"]["int8"] == 24

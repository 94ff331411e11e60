"""Decode-path check: greedy continuations through the variant's KV cache vs the source's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.bench.decode import matched_prefix, measure_decode, summarize_decode
from edgekit.bench.fidelity import causal_stats
from edgekit.source import load_source


def test_matched_prefix_counts_until_the_first_divergence() -> None:
    assert matched_prefix([1, 2, 3, 4], [1, 2, 3, 4]) == 4
    assert matched_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2  # a later agreement does not count
    assert matched_prefix([1, 2], [5, 2]) == 0


def test_summary_resamples_prompts() -> None:
    rng = np.random.default_rng(0)
    steps = [
        causal_stats(rng.normal(size=(8, 20)), rng.normal(size=(8, 20)), rng.integers(0, 20, 8))
        for _ in range(4)
    ]
    out = summarize_decode([8, 4, 0, 2], 8, steps)
    assert (
        out["match_fraction"]["value"] == pytest.approx(14 / 32)
        and out["matched_tokens_mean"]["value"] == 3.5
    )
    assert out["full_match_rate"]["value"] == 0.25 and out["match_fraction"]["n_windows"] == 4
    assert out["kld_mean"]["n"] == 32 and out["kld_mean"]["n_windows"] == 4 and out["kld_mean"]["value"] > 0


def test_faithful_export_matches_the_source_on_the_decode_path(tiny_onnx, tiny_model) -> None:  # type: ignore[no-untyped-def]
    variant = tiny_onnx("llama")
    out = measure_decode(
        variant.session(), load_source(str(tiny_model("llama"))), None, prompts=3, new_tokens=12
    )
    assert out is not None and out["prompts"] == 3 and out["new_tokens"] == 12 and out["greedy"] is True
    assert out["matched_tokens"] == [12, 12, 12]
    m = out["metrics"]
    assert m["match_fraction"]["value"] == 1.0 and m["full_match_rate"]["value"] == 1.0
    assert m["kld_mean"]["value"] < 1e-6 and m["top1_agreement"]["value"] == 1.0 and m["kld_mean"]["n"] == 36


def test_unfaithful_variant_diverges_on_the_decode_path(tiny_onnx, perturbed_llama: Path) -> None:  # type: ignore[no-untyped-def]
    out = measure_decode(
        tiny_onnx("llama").session(), load_source(str(perturbed_llama)), None, prompts=4, new_tokens=12
    )
    assert out is not None
    m = out["metrics"]
    assert m["kld_mean"]["value"] > 1e-3 and m["match_fraction"]["value"] < 1.0
    assert min(out["matched_tokens"]) < 12


def test_encoders_have_no_decode_path(tiny_onnx, tiny_model) -> None:  # type: ignore[no-untyped-def]
    assert (
        measure_decode(tiny_onnx("bert-emb").session(), load_source(str(tiny_model("bert-emb"))), None)
        is None
    )

"""Fidelity maths against hand computations, and real ONNX vs PyTorch fidelity on the tiny fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.bench.fidelity import (
    CausalStats,
    bootstrap_ci,
    causal_stats,
    document_windows,
    measure_fidelity,
    summarize_causal,
    summarize_classification,
    summarize_embeddings,
    window_size,
    windows,
)
from edgekit.errors import InputError
from edgekit.source import load_source


def _logits(n: int = 200, vocab: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, vocab)) * 3, rng.integers(0, vocab, n)


def test_identical_logits_give_zero_kld_and_full_agreement() -> None:
    logits, nxt = _logits()
    out = summarize_causal(causal_stats(logits, logits.copy(), nxt))
    assert out["top1_agreement"]["value"] == 1.0
    assert out["kld_mean"]["value"] == 0.0 and out["kld_max"]["value"] == 0.0
    assert out["ppl_ratio"]["value"] == pytest.approx(1.0, abs=1e-12)
    assert out["ppl_ratio"]["ci95_low"] == pytest.approx(1.0) and out["ppl_ratio"]["ci95_high"] == pytest.approx(1.0)


def test_kld_ppl_top1_match_a_hand_computation() -> None:
    p_logits, nxt = _logits(seed=1)
    q_logits = p_logits + np.random.default_rng(2).normal(size=p_logits.shape)
    st = causal_stats(p_logits, q_logits, nxt)
    # Reference written independently: softmax probabilities, then the textbook formulas.
    p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
    q = np.exp(q_logits) / np.exp(q_logits).sum(-1, keepdims=True)
    kld = np.sum(p * np.log(p / q), axis=-1)
    rows = np.arange(len(nxt))
    ppl_p = np.exp(-np.mean(np.log(p[rows, nxt])))
    ppl_q = np.exp(-np.mean(np.log(q[rows, nxt])))
    out = summarize_causal(st)
    assert out["kld_mean"]["value"] == pytest.approx(kld.mean(), rel=1e-5) and out["kld_mean"]["value"] > 0
    assert out["kld_max"]["value"] == pytest.approx(kld.max(), rel=1e-5)
    assert out["kld_p99"]["value"] == pytest.approx(np.percentile(kld, 99), rel=1e-5)
    assert out["ppl_source"]["value"] == pytest.approx(ppl_p, rel=1e-5)
    assert out["ppl_variant"]["value"] == pytest.approx(ppl_q, rel=1e-5)
    assert out["ppl_ratio"]["value"] == pytest.approx(ppl_q / ppl_p, rel=1e-5)
    assert out["top1_agreement"]["value"] == pytest.approx(np.mean(p.argmax(-1) == q.argmax(-1)), abs=1e-6)
    for m in out.values():
        assert m["ci95_low"] <= m["value"] <= m["ci95_high"] and m["n"] == len(nxt)
    # A real interval: the KLD mean's CI has width, and bootstrap resampling is deterministic.
    assert out["kld_mean"]["ci95_low"] < out["kld_mean"]["value"] < out["kld_mean"]["ci95_high"]
    assert summarize_causal(st) == out


def test_bootstrap_ci_of_a_mean_matches_its_standard_error() -> None:
    x = np.random.default_rng(3).normal(size=400)
    low, high = bootstrap_ci(len(x), lambda i: float(x[i].mean()), float(x.mean()), samples=2000)
    se = x.std() / np.sqrt(len(x))
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_embedding_and_classification_maths() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 16))
    same = summarize_embeddings(a, a * 3.0)  # scale does not change the direction
    assert same["cosine_mean"]["value"] == pytest.approx(1.0) and same["cosine_p5"]["value"] == pytest.approx(1.0)
    noisy = summarize_embeddings(a, a + rng.normal(size=a.shape))
    assert 0 < noisy["cosine_mean"]["value"] < 1 and noisy["cosine_p5"]["value"] < noisy["cosine_mean"]["value"]
    src = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    var = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    out = summarize_classification(src, var, np.array([0, 1, 1, 0]))
    assert out["agreement"]["value"] == 0.75
    assert out["accuracy_source"]["value"] == 0.5 and out["accuracy"]["value"] == 0.75
    assert out["accuracy_ratio"]["value"] == 1.5


def test_windows_and_empty_input() -> None:
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a lone token predicts nothing
    empty = causal_stats(np.zeros((0, 5)), np.zeros((0, 5)), np.zeros(0, dtype=int))
    with pytest.raises(InputError):
        summarize_causal(empty)


def test_real_onnx_export_is_faithful_and_deterministic(tiny_onnx, tiny_model) -> None:  # type: ignore[no-untyped-def]
    variant = tiny_onnx("llama")
    source = load_source(str(tiny_model("llama")))
    first = measure_fidelity(variant.session(), source, None, 96)
    second = measure_fidelity(variant.session(), source, None, 96)
    assert first == second
    assert first["top1_agreement"]["value"] == 1.0 and first["kld_mean"]["value"] < 1e-6
    # 96 tokens → windows of 16 (at least 8 would be wanted): 6 windows, 15 predictions each.
    assert first["ppl_ratio"]["value"] == pytest.approx(1.0, abs=1e-4) and first["top1_agreement"]["n"] == 90
    assert first["top1_agreement"]["n_windows"] == 6 and first["top1_agreement"]["n_documents"] == 6


def test_perturbed_source_gives_positive_kld(tiny_onnx, perturbed_llama: Path) -> None:  # type: ignore[no-untyped-def]
    out = measure_fidelity(tiny_onnx("llama").session(), load_source(str(perturbed_llama)), None, 96)
    assert out["kld_mean"]["value"] > 1e-3 and out["kld_max"]["value"] >= out["kld_p99"]["value"] > 0
    assert out["top1_agreement"]["value"] < 1.0 and out["ppl_ratio"]["value"] != pytest.approx(1.0, abs=1e-4)


def test_classification_accuracy_from_labelled_tsv(tiny_onnx, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "labelled.tsv"
    data.write_text("LABEL_0\tthe movie was fine\n1\ta dull and tired plot\nLABEL_1\tgreat acting all round\n")
    out = measure_fidelity(tiny_onnx("bert-cls").session(), load_source(str(tiny_model("bert-cls"))), data, 64)
    assert out["agreement"]["value"] == 1.0 and out["agreement"]["n"] == 3
    assert out["accuracy_ratio"]["value"] == pytest.approx(1.0) and "accuracy_source" in out
    data.write_text("positive\tthe movie was fine\n")
    with pytest.raises(InputError, match="not one of the model's labels"):
        measure_fidelity(tiny_onnx("bert-cls").session(), load_source(str(tiny_model("bert-cls"))), data, 64)


def _windowed(n_windows: int, per_window: int, seed: int = 5) -> CausalStats:
    """Positions correlated within a window: each window has its own agreement rate (as real text does)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_windows):
        rate = rng.uniform(0.6, 1.0)
        top1 = rng.random(per_window) < rate
        zeros = np.zeros(per_window)
        parts.append(CausalStats(kld=rng.gamma(1.0, rate, per_window), nll_source=zeros, nll_variant=zeros, top1=top1))
    return CausalStats.concat(parts)


def _width(m: dict[str, float]) -> float:
    return m["ci95_high"] - m["ci95_low"]


def test_window_bootstrap_is_wider_than_position_bootstrap_and_widens_with_fewer_windows() -> None:
    many, few = _windowed(32, 64), _windowed(4, 64)
    out_many, out_few = summarize_causal(many), summarize_causal(few)
    assert out_many["top1_agreement"]["n_windows"] == 32 and out_few["top1_agreement"]["n_windows"] == 4
    assert out_many["top1_agreement"]["n"] == 32 * 64
    assert _width(out_few["top1_agreement"]) > 1.5 * _width(out_many["top1_agreement"])
    assert _width(out_few["kld_mean"]) > 1.5 * _width(out_many["kld_mean"])
    # The same positions resampled one by one (the old, too-narrow way) give a narrower interval.
    positions = CausalStats(many.kld, many.nll_source, many.nll_variant, many.top1)
    out_pos = summarize_causal(positions)
    assert out_pos["top1_agreement"]["n_windows"] == 32 * 64
    assert _width(out_pos["top1_agreement"]) < 0.8 * _width(out_many["top1_agreement"])


def test_windows_never_cross_documents_and_spread_round_robin() -> None:
    docs = [list(range(d * 1000, d * 1000 + length)) for d, length in enumerate((600, 40, 300, 3))]
    wins = document_windows(docs, 256, 10_000)
    for doc, win in wins:
        assert all(t // 1000 == doc for t in win) and 2 <= len(win) <= 256
    assert [d for d, _ in wins[:4]] == [0, 1, 2, 3]  # every document's first window before any second one
    assert sum(len(w) for _, w in wins) == 600 + 40 + 300 + 3
    budgeted = document_windows(docs, 256, 300)
    assert sum(len(w) for _, w in budgeted) == 300 and [(d, len(w)) for d, w in budgeted] == [(0, 256), (1, 40), (2, 4)]
    assert window_size(2048, 8192) == 256 and window_size(96, 8192) == 16 and window_size(2048, 100) == 100


def test_short_documents_still_fill_the_token_budget() -> None:
    from edgekit.bench.fidelity import tokenize_documents

    class Words:  # one token per word: enough to count
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [len(w) for w in text.split()]}

    docs = ["w " * 100] * 30 + ["w " * 1000] * 5  # 30 short documents, then long ones
    ids = tokenize_documents(Words(), docs, 2048, 256)
    wins = document_windows(ids, 256, 2048)
    assert sum(len(w) for _, w in wins) == 2048 and len({d for d, _ in wins}) >= 8

"""Fidelity of a variant vs its source on the same tokens: PPL, KLD, top-1 (causal LM), agreement/accuracy
(classification), cosine (embeddings), each with a 95 % bootstrap confidence interval.

Causal LM positions inside one window are correlated (same context, same topic), so the bootstrap resamples whole
windows, never single positions: resampling positions made intervals several times too narrow. Windows never
cross a document boundary and are taken round-robin across documents, so the default eval (2,048 tokens) spans
at least 8 independent documents. Encoder items are independent, so each item is its own unit.

The maths lives in pure numpy functions (`causal_stats`, `summarize_causal`, ...) so tests can check them
against a hand computation; `measure_fidelity` feeds them real ONNX and PyTorch outputs. The KLD is
KL(source ‖ variant), the direction llama.cpp's `--kl-divergence` reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit import progress
from edgekit.errors import InputError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from transformers import PreTrainedTokenizerBase

    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.source import SourceModel

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 1000
SEED = 0  # fixed: the same tokens give the same CIs to the last digit
WINDOW = 256
MIN_WINDOWS = 8  # fewer resampling units than this give intervals that mean little
ROWS = 64  # positions per float64 log-softmax chunk (causal_stats)
ENCODER_MAX_TOKENS = 128


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


@dataclass
class CausalStats:
    """Per-position statistics (one entry per predicted token)."""

    kld: np.ndarray
    nll_source: np.ndarray
    nll_variant: np.ndarray
    top1: np.ndarray  # bool
    window: np.ndarray | None = None  # the resampling unit of each position; None: one unit per position

    @classmethod
    def concat(cls, parts: list[CausalStats]) -> CausalStats:
        """Join per-window stats; each part becomes one resampling unit."""
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        window = np.concatenate([np.full(len(p.kld), i) for i, p in enumerate(parts)])
        return cls(cat("kld"), cat("nll_source"), cat("nll_variant"), cat("top1"), window)

    def units(self) -> list[np.ndarray]:
        if self.window is None:
            return [np.array([i]) for i in range(len(self.kld))]
        return [np.flatnonzero(self.window == w) for w in np.unique(self.window)]


def causal_stats(source_logits: np.ndarray, variant_logits: np.ndarray, next_ids: np.ndarray) -> CausalStats:
    """Stats for positions predicting `next_ids` ([n, vocab] logits each, n next tokens).

    ROWS positions at a time: the float64 log-probabilities of a whole 256-token window are ~0.1 GB per array for
    a 49k vocabulary, and four of them were the bench's peak; every figure is per row, so the same either way."""
    kld, nll_source, nll_variant = [np.zeros(0)], [np.zeros(0)], [np.zeros(0)]  # no rows: empty arrays, as before
    for r in range(0, len(next_ids), ROWS):
        lp = log_softmax(source_logits[r:r + ROWS])
        lq = log_softmax(variant_logits[r:r + ROWS])
        kld.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
        rows, ids = np.arange(len(lp)), np.asarray(next_ids[r:r + ROWS])
        nll_source.append(-lp[rows, ids])
        nll_variant.append(-lq[rows, ids])
    return CausalStats(
        kld=np.maximum(np.concatenate(kld), 0.0),  # rounding can give -1e-17 for identical rows
        nll_source=np.concatenate(nll_source),
        nll_variant=np.concatenate(nll_variant),
        top1=source_logits.argmax(-1) == variant_logits.argmax(-1),
    )


def bootstrap_ci(n: int, stat: Callable[[np.ndarray], float], value: float, *, units: list[np.ndarray] | None = None,
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap; `stat` takes an index array. With `units` (index arrays, e.g. one per window), whole
    units are drawn with replacement; else single items of `n`. Widened to include the point estimate
    (percentile intervals of max-like statistics can otherwise end just below it)."""
    rng = np.random.default_rng(seed)
    if units is None:
        draws = np.array([stat(rng.integers(0, n, n)) for _ in range(samples)])
    else:
        k = len(units)
        draws = np.array([stat(np.concatenate([units[j] for j in rng.integers(0, k, k)])) for _ in range(samples)])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(min(low, value)), float(max(high, value))


def metric(stat: Callable[[np.ndarray], float], n: int, units: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Value, 95 % interval, `n` items and `n_windows` resampling units (= n when items are independent)."""
    value = float(stat(np.arange(n)))
    low, high = bootstrap_ci(n, stat, value, units=units)
    return {"value": _sig(value), "ci95_low": _sig(low), "ci95_high": _sig(high), "n": n,
            "n_windows": n if units is None else len(units)}


def _sig(x: float, digits: int = 7) -> float:
    """Significant digits, not decimals: an fp32 export's KLD of 3e-9 must not print as 0."""
    return float(f"{x:.{digits}g}")


def summarize_causal(st: CausalStats) -> dict[str, dict[str, Any]]:
    n = len(st.kld)
    if n == 0:
        raise InputError("no tokens to evaluate fidelity on; give --eval-data with more text")
    u = st.units()
    return {
        "top1_agreement": metric(lambda i: float(st.top1[i].mean()), n, u),
        "kld_mean": metric(lambda i: float(st.kld[i].mean()), n, u),
        "kld_p99": metric(lambda i: float(np.percentile(st.kld[i], 99)), n, u),
        "kld_max": metric(lambda i: float(st.kld[i].max()), n, u),
        "ppl_source": metric(lambda i: float(np.exp(st.nll_source[i].mean())), n, u),
        "ppl_variant": metric(lambda i: float(np.exp(st.nll_variant[i].mean())), n, u),
        # One resample for both models, so the ratio's CI reflects their paired difference.
        "ppl_ratio": metric(lambda i: float(np.exp(st.nll_variant[i].mean() - st.nll_source[i].mean())), n, u),
    }


def summarize_embeddings(source: np.ndarray, variant: np.ndarray) -> dict[str, dict[str, Any]]:
    """Cosine of normalized embeddings per item ([n, dim] each)."""
    cos = (_unit(source) * _unit(variant)).sum(-1)
    n = len(cos)
    return {
        "cosine_mean": metric(lambda i: float(cos[i].mean()), n),
        "cosine_p5": metric(lambda i: float(np.percentile(cos[i], 5)), n),
    }


def summarize_classification(source: np.ndarray, variant: np.ndarray, labels: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """Agreement of argmax predictions; accuracy of each and their ratio when labels are given."""
    ps, pv = source.argmax(-1), variant.argmax(-1)
    n = len(ps)
    out = {"agreement": metric(lambda i: float((ps[i] == pv[i]).mean()), n)}
    if labels is not None:
        out["accuracy"] = metric(lambda i: float((pv[i] == labels[i]).mean()), n)
        out["accuracy_source"] = metric(lambda i: float((ps[i] == labels[i]).mean()), n)
        out["accuracy_ratio"] = metric(lambda i: _ratio(float((pv[i] == labels[i]).mean()), float((ps[i] == labels[i]).mean())), n)
    return out


def _ratio(a: float, b: float) -> float:
    # Undefined when the source gets nothing right: NaN, which the bootstrap skips (nanpercentile).
    return a / b if b > 0 else (1.0 if a == 0 else float("nan"))


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    out: np.ndarray = x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)
    return out


# ---------------------------------------------------------------- real models


def eval_token_ids(tokenizer: PreTrainedTokenizerBase, eval_data: Path | None, eval_tokens: int) -> list[int]:
    """The first `eval_tokens` tokens of the held-out text (lines joined by blank lines)."""
    from edgekit.data import load_texts

    ids: list[int] = []
    for line in load_texts(eval_data):
        ids += tokenizer(("\n\n" if ids else "") + line, add_special_tokens=False)["input_ids"]
        if len(ids) >= eval_tokens:
            break
    return ids[:eval_tokens]


def windows(ids: list[int], size: int) -> list[list[int]]:
    """Windows of at most `size` tokens (each needs 2 tokens to predict anything)."""
    return [ids[i:i + size] for i in range(0, len(ids), size) if len(ids[i:i + size]) >= 2]


def eval_documents(eval_data: Path | None) -> list[str]:
    """Independent held-out documents: the lines of --eval-data, or the built-in eval documents."""
    from edgekit import data

    if eval_data is not None:
        return data.load_texts(eval_data)
    return data.eval_documents()


def window_size(eval_tokens: int, max_positions: int) -> int:
    """WINDOW tokens, shorter when that would leave fewer than MIN_WINDOWS windows (or exceed the positions)."""
    return max(2, min(WINDOW, max_positions, max(16, eval_tokens // MIN_WINDOWS)))


def document_windows(docs: list[list[int]], size: int, eval_tokens: int) -> list[tuple[int, list[int]]]:
    """(document index, window) pairs: windows of at most `size` tokens that never cross a document boundary,
    taken round-robin (every document's first window, then every second one...) until `eval_tokens` tokens,
    so a short eval still spans as many documents as it can."""
    per_doc = [windows(d, size) for d in docs]
    out: list[tuple[int, list[int]]] = []
    budget = eval_tokens
    for rank in range(max((len(w) for w in per_doc), default=0)):
        for doc, wins in enumerate(per_doc):
            if rank < len(wins) and budget >= 2:
                win = wins[rank][:budget]
                out.append((doc, win))
                budget -= len(win)
    return out


def tokenize_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str], eval_tokens: int, size: int) -> list[list[int]]:
    """Token ids per document; stops once the first windows alone cover `eval_tokens` (round-robin never
    reaches a later document then)."""
    out: list[list[int]] = []
    first_windows = 0
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2:
            out.append(ids)
            first_windows += min(len(ids), size)
        if first_windows >= eval_tokens:
            break
    return out


def eval_windows(tokenizer: PreTrainedTokenizerBase, config: dict[str, Any], eval_data: Path | None,
                 eval_tokens: int) -> list[tuple[int, list[int]]]:
    """(document index, token window) pairs the causal fidelity reads; the bundle's reference data uses the same."""
    max_pos = int(config.get("max_position_embeddings") or config.get("n_positions") or WINDOW)
    size = window_size(eval_tokens, max_pos)
    docs = tokenize_documents(tokenizer, eval_documents(eval_data), eval_tokens, size)
    wins = document_windows(docs, size, eval_tokens)
    if not wins:
        raise InputError("no tokens to evaluate fidelity on; give --eval-data with more text")
    return wins


def causal_fidelity(variant_session: InferenceSession, outputs: SourceOutputs) -> dict[str, dict[str, Any]]:
    """The variant on the cached source's windows, against the source's logits there."""
    from edgekit.runtime import Decoder

    wins = outputs.windows()
    decoder = Decoder(variant_session)
    parts = []
    with progress.stage("bench: fidelity", total=len(wins)) as st:
        for (_, win), ref in zip(wins, outputs.window_logits(), strict=True):
            got = decoder.logits(win)
            parts.append(causal_stats(ref, got[:-1], np.asarray(win[1:])))
            st.advance()
    if len(wins) < MIN_WINDOWS:
        log.warning("fidelity on %d windows only: its intervals are rough; give more --eval-tokens or --eval-data", len(wins))
    out = summarize_causal(CausalStats.concat(parts))
    n_documents = len({d for d, _ in wins})
    for entry in out.values():
        entry["n_documents"] = n_documents
    return out


def encoder_texts(eval_data: Path | None, eval_tokens: int, task: str) -> tuple[list[str], list[str]]:
    """Texts (and labels from a 'label<TAB>text' file for classification) for encoder fidelity."""
    from edgekit.data import load_texts

    lines = load_texts(eval_data)
    labels: list[str] = []
    if task == "text-classification" and eval_data is not None and all("\t" in ln for ln in lines):
        labels = [ln.split("\t", 1)[0].strip() for ln in lines]
        lines = [ln.split("\t", 1)[1].strip() for ln in lines]
    # Sentences, not whole documents: encoders see short inputs; ~eval_tokens/24 items, at least 16.
    if not labels:
        lines = [s.strip() for ln in lines for s in ln.split(". ") if len(s.split()) >= 3]
        lines = lines[: max(16, eval_tokens // 24)]
    return lines, labels


def encoder_fidelity(variant_session: InferenceSession, outputs: SourceOutputs) -> dict[str, dict[str, Any]]:
    """The variant on the cached source's inputs, against the source's outputs (logits or pooled embeddings)."""
    from edgekit.runtime import Encoder

    task = str(outputs.meta["task"])
    encoder = Encoder(variant_session, task)
    ids, mask, src = outputs.array("ids"), outputs.array("mask"), np.asarray(outputs.array("encoder_outputs"))
    var, start = [], 0
    with progress.stage("bench: fidelity", total=len(outputs.meta["lens"])) as st:
        for length in outputs.meta["lens"]:
            part = slice(start, start + length)
            var.append(encoder.run(np.asarray(ids[part])[None], np.asarray(mask[part])[None])[0])
            start += length
            st.advance()
    if task == "text-classification":
        labels = outputs.meta.get("labels")
        return summarize_classification(src, np.stack(var), None if labels is None else np.asarray(labels))
    return summarize_embeddings(src, np.stack(var))


def _label_ids(names: list[str], id2label: dict[Any, Any]) -> np.ndarray:
    by_name = {str(v).lower(): int(k) for k, v in id2label.items()}
    out = []
    for name in names:
        if name.lower() in by_name:
            out.append(by_name[name.lower()])
        elif name.lstrip("-").isdigit():
            out.append(int(name))
        else:
            known = ", ".join(sorted(by_name)) or "integers"
            raise InputError(f"eval data label {name!r} is not one of the model's labels ({known})")
    return np.asarray(out)


def measure_fidelity(variant_session: InferenceSession, source: SourceModel, eval_data: Path | None, eval_tokens: int,
                     outputs: SourceOutputs | None = None) -> dict[str, Any]:
    """Source (PyTorch fp32, its outputs cached: edgekit.bench.sourceref) vs variant (ONNX) on the same tokens."""
    from edgekit.bench.sourceref import source_outputs

    if outputs is None:
        outputs = source_outputs(source, eval_data, eval_tokens, 0)
    if source.task == "text-generation":
        return causal_fidelity(variant_session, outputs)
    return encoder_fidelity(variant_session, outputs)

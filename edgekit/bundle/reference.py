"""The source's next-token reference, shipped in a bundle (`reference.npz`), so a device can measure fidelity
without the source weights or torch — numpy only; this module runs under the device's own Python (3.9+).

Per predicted position it keeps what llama.cpp's `--kl-divergence-base` file is used for, compactly: the
source's top-k token ids and log-probs (k = 64: ~0.5 KB a position, ~1 MB for 2k tokens), the log-sum-exp of
its logits, and its NLL of the true next token. From these and a variant's full logits:

  * top-1 agreement: exact (the source's argmax is top_ids[:, 0]);
  * PPL (source and variant) and their ratio: exact;
  * KLD(source ‖ variant): the top-k terms exactly; the rest of the vocabulary (mass p_tail = 1 - Σ top-k, ~10 %
    for SmolLM2 at k = 64) estimated from m = 64 tail tokens drawn by systematic sampling from the source's tail
    distribution (ids and log-probs stored): Σ_tail p (lp - lq) ≈ p_tail · mean_j (lp_j - lq_j). Measured on SmolLM2
    int8 (510 positions): mean KLD 0.00417 / 0.00414 / 0.00414 over three seeds vs 0.00415 from the full logits,
    where the top-k alone with the tail as one bucket (a lower bound) gives 0.00347. Per-position percentiles
    (kld_p99, kld_max) are noisier than the mean (p99 within ~10 %).

~1 KB a position (float32: fp16 log-probs would add a bias of the size of the KLD itself): 0.5 MB for the
default 510 positions, 2 MB for 2k.

The token ids are the exact windows the host's fidelity used (same tokenizer call, same window size), so a
device reproduces the host's figures from the same positions.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

FILE = "reference.npz"
SCHEMA = "edgekit/reference@1"
TOP_K = 64
TAIL_SAMPLES = 64
# Vocabularies up to this size are stored whole (exact KLD): a few KB per position, and the top-k + sampled-tail
# estimate is loosest exactly there, where the tail holds most of the mass (small or untrained models).
EXACT_VOCAB = 1024
SEED = 0
_ARRAYS = ("ids", "window_lens", "top_ids", "top_logp", "tail_ids", "tail_logp", "lse", "nll")
ROW_ARRAYS = _ARRAYS[2:]


class Reference:
    """The reference arrays: `ids` (all window tokens, concatenated), `window_lens`, and per predicted position
    (Σ (len - 1) of them) `top_ids` [n, k], `top_logp` [n, k], `lse` [n], `nll` [n]."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.arrays = arrays
        self.meta = meta

    @property
    def windows(self) -> list[list[int]]:
        ids = self.arrays["ids"].tolist()
        out, start = [], 0
        for length in self.arrays["window_lens"].tolist():
            out.append(ids[start:start + length])
            start += length
        return out

    @property
    def positions(self) -> int:
        return len(self.arrays["nll"])

    def rows(self, part: slice) -> dict[str, np.ndarray]:
        """The per-position arrays for the positions in `part`."""
        return {name: self.arrays[name][part] for name in ROW_ARRAYS}

    def window_slices(self) -> list[slice]:
        """Row ranges of the per-position arrays, one per window."""
        out, start = [], 0
        for length in self.arrays["window_lens"].tolist():
            out.append(slice(start, start + length - 1))
            start += length - 1
        return out


class ReferenceBuilder:
    """Collect source logits window by window (host side), then `build()` the Reference."""

    def __init__(self, top_k: int = TOP_K, tail_samples: int = TAIL_SAMPLES, seed: int = SEED, *,
                 exact_vocab: int = EXACT_VOCAB) -> None:
        self.top_k = top_k
        self.exact_vocab = exact_vocab
        self.tail_samples = tail_samples
        self.rng = np.random.default_rng(seed)
        self.windows: list[list[int]] = []
        self.parts: list[dict[str, np.ndarray]] = []

    def _tail(self, logp: np.ndarray, order: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Systematic sample of the tail tokens (all but the top-k), proportional to the source's probability."""
        m = self.tail_samples
        if logp.shape[-1] <= k or m == 0:
            return np.zeros((len(logp), 0), np.int32), np.zeros((len(logp), 0), np.float32)
        ids = np.empty((len(logp), m), dtype=np.int64)
        for r in range(len(logp)):
            tail = order[r, k:]
            cdf = np.cumsum(np.exp(logp[r, tail]))
            points = (np.arange(m) + self.rng.random()) / m * cdf[-1]
            ids[r] = tail[np.minimum(np.searchsorted(cdf, points), len(tail) - 1)]
        return ids.astype(np.int32), np.take_along_axis(logp, ids, -1).astype(np.float32)

    def add(self, window: list[int], source_logits: np.ndarray) -> None:
        """`source_logits` [len(window), vocab]; positions 0..len-2 predict window[1:]."""
        logits = np.asarray(source_logits, dtype=np.float64)[: len(window) - 1]
        top = logits.max(axis=-1)
        lse = np.log(np.exp(logits - top[:, None]).sum(axis=-1)) + top
        logp = logits - lse[:, None]
        order = np.argsort(-logp, axis=-1, kind="stable")
        vocab = logp.shape[-1]
        k = vocab if vocab <= self.exact_vocab else min(self.top_k, vocab)
        tail_ids, tail_logp = self._tail(logp, order, k)
        self.windows.append(list(window))
        self.parts.append({"top_ids": order[:, :k].astype(np.int32),
                           "top_logp": np.take_along_axis(logp, order[:, :k], -1).astype(np.float32),
                           "tail_ids": tail_ids, "tail_logp": tail_logp, "lse": lse.astype(np.float32),
                           "nll": (-logp[np.arange(len(logp)), np.asarray(window[1:])]).astype(np.float32)})

    def build(self, meta: dict[str, Any]) -> Reference:
        if not self.parts:
            raise ValueError("no windows added to the reference")
        arrays = {"ids": np.asarray([t for w in self.windows for t in w], dtype=np.int32),
                  "window_lens": np.asarray([len(w) for w in self.windows], dtype=np.int32),
                  **{name: np.concatenate([p[name] for p in self.parts]) for name in ROW_ARRAYS}}
        tail = np.clip(1.0 - np.exp(arrays["top_logp"].astype(np.float64)).sum(-1), 0.0, 1.0)
        full = {"schema": SCHEMA, "top_k": int(arrays["top_ids"].shape[1]), "tail_samples": int(arrays["tail_ids"].shape[1]),
                "positions": len(arrays["nll"]), "windows": len(self.windows),
                "tail_mass_mean": float(tail.mean()), "tail_mass_max": float(tail.max()), **meta}
        return Reference(arrays, full)


def save(ref: Reference, path: Path) -> Path:
    buf = io.BytesIO()
    # Uncompressed: log-probs hardly compress, and np.load then needs nothing but numpy (no pickle).
    arrays: dict[str, Any] = {"meta": np.asarray(json.dumps(ref.meta, sort_keys=True)), **ref.arrays}
    np.savez(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def load(path: Path) -> Reference:
    """Read and check a reference file; ValueError says what is wrong (the caller maps it to its error)."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: np.asarray(data[name]) for name in _ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not an edgekit reference file ({exc})") from exc
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path}: reference schema is {meta.get('schema')!r}, expected {SCHEMA}")
    n = int(arrays["window_lens"].sum() - len(arrays["window_lens"]))
    if int(arrays["window_lens"].sum()) != len(arrays["ids"]) or any(len(arrays[a]) != n for a in ROW_ARRAYS):
        raise ValueError(f"{path}: reference arrays disagree in length")
    return Reference(arrays, meta)


def variant_stats(rows: dict[str, np.ndarray], variant_logits: np.ndarray, next_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position kld (top-k exact + sampled tail), nll_source, nll_variant, top1, and the variant's argmax;
    `rows` are the reference's per-position arrays for these positions."""
    from edgekit.bench.fidelity import log_softmax  # numpy only: importable on the device

    lq = log_softmax(variant_logits)
    top_ids = rows["top_ids"].astype(np.int64)
    lp = rows["top_logp"].astype(np.float64)
    kld = (np.exp(lp) * (lp - np.take_along_axis(lq, top_ids, -1))).sum(-1)
    if rows["tail_ids"].shape[1]:
        p_tail = np.clip(1.0 - np.exp(lp).sum(-1), 0.0, 1.0)
        tail_lp = rows["tail_logp"].astype(np.float64)
        tail_lq = np.take_along_axis(lq, rows["tail_ids"].astype(np.int64), -1)
        kld = kld + p_tail * (tail_lp - tail_lq).mean(-1)  # importance sample of Σ_tail p (lp - lq)
    argmax = variant_logits.argmax(-1)
    return {"kld": np.maximum(kld, 0.0), "nll_source": rows["nll"].astype(np.float64),
            "nll_variant": -lq[np.arange(len(next_ids)), next_ids], "top1": argmax == top_ids[:, 0], "argmax": argmax}

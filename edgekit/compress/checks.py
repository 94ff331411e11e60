"""Quick post-quantization checks: does the variant still agree with its fp32 parent, and is it any faster?

Not the bench: a few calibration sequences and a handful of timed forwards on this host, enough to catch
a collapsed model (dynamic int8 on SmolLM2: top-1 0.00) or a variant that is slower than fp32.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.bench.fidelity import log_softmax

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

TOP1_FLOOR = 0.9
COSINE_FLOOR = 0.99
SLOWER_MARGIN = 1.05
ROWS = 64  # positions per log-softmax chunk in the agreement check


def decoder_agreement(parent: InferenceSession, variant: InferenceSession, seqs: list[list[int]]) -> dict[str, float]:
    """Top-1 agreement and mean KL(parent || variant) over every position of `seqs` (full forward, empty past)."""
    from edgekit.runtime import Decoder

    ref, var = Decoder(parent), Decoder(variant)
    agree, kld, n = 0, 0.0, 0
    for seq in seqs:
        a, b = ref.logits(seq), var.logits(seq)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        for r in range(0, len(a), ROWS):  # float64 log-probs of a whole sequence: 4 x 0.2 GB at 512 x 49k
            lp, lq = log_softmax(a[r:r + ROWS]), log_softmax(b[r:r + ROWS])
            kld += float((np.exp(lp) * (lp - lq)).sum())
        n += len(seq)
    return {"top1_agreement": round(agree / max(n, 1), 4), "kld_mean": round(kld / max(n, 1), 6), "tokens": n}


def encoder_agreement(parent: InferenceSession, variant: InferenceSession, task: str, seqs: list[list[int]]) -> dict[str, float]:
    """Cosine of pooled embeddings (feature extraction) or label agreement (classification)."""
    from edgekit.runtime import Encoder

    ref, var = Encoder(parent, task), Encoder(variant, task)
    values = []
    for seq in seqs:
        ids = np.asarray(seq, dtype=np.int64)[None, :]
        a, b = ref.run(ids, np.ones_like(ids)), var.run(ids, np.ones_like(ids))
        if task == "text-classification":
            values.append(float(a.argmax(-1)[0] == b.argmax(-1)[0]))
        else:
            values.append(float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    key = "agreement" if task == "text-classification" else "cosine_mean"
    return {key: round(float(np.mean(values)), 4) if values else 0.0, "samples": len(values)}


def agreement(parent: InferenceSession, variant: InferenceSession, task: str, seqs: list[list[int]], method: str = "") -> dict[str, Any]:
    """The quick accuracy check; adds `warning` when the variant falls under the floor."""
    if task == "text-generation":
        out: dict[str, Any] = decoder_agreement(parent, variant, seqs)
        value, floor, key = out["top1_agreement"], TOP1_FLOOR, "top1_agreement"
    else:
        out = encoder_agreement(parent, variant, task, seqs)
        key = "agreement" if task == "text-classification" else "cosine_mean"
        value, floor = out[key], (TOP1_FLOOR if task == "text-classification" else COSINE_FLOOR)
    out["floor"] = floor
    if value < floor:
        advice = ("try int8-weight or int4-hqq" if method in ("int8-dynamic", "int8-static")
                  else "try 8 bits, a smaller --block-size")
        out["warning"] = (f"{method or 'variant'}: {key} vs the fp32 parent is {value:.3f} (< {floor}), it changes "
                          f"the model's answers; {advice} or --max-top1-drop")
    return out


def primary(check: dict[str, Any]) -> float:
    for key in ("top1_agreement", "cosine_mean", "agreement"):
        if key in check:
            return float(check[key])
    return 0.0


def _time_pair(parent: InferenceSession, variant: InferenceSession, feed: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    """Median ms of each, runs interleaved so that load from other processes slows both alike."""
    parent.run(None, feed)  # warm-up: first runs allocate and pack weights
    variant.run(None, feed)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for i, session in enumerate((parent, variant)):
            t0 = time.perf_counter()
            session.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return float(np.median(times[0])) * 1000, float(np.median(times[1])) * 1000


def speed(parent: InferenceSession, variant: InferenceSession, feeds: list[dict[str, np.ndarray]], runs: int = 5) -> dict[str, Any]:
    """Median forward time of parent and variant on the same feeds: a prefill and (decoders) a decode step."""
    out: dict[str, Any] = {"runs": runs, "cases": {}}
    slower = []
    for i, feed in enumerate(feeds[:2]):
        past = [v for k, v in feed.items() if k.startswith("past_key_values")]
        case = f"forward_{i}" if not past else ("decode" if past[0].shape[2] else "prefill")
        p, v = _time_pair(parent, variant, feed, runs)
        out["cases"][case] = {"fp32_ms": round(p, 3), "variant_ms": round(v, 3), "speedup": round(p / max(v, 1e-9), 3)}
        if v > p * SLOWER_MARGIN:
            slower.append(case)
    if slower:
        out["warning"] = (f"the variant is slower than fp32 on this host ({', '.join(slower)}); "
                          "bench it before shipping")
    return out

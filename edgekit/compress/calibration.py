"""Calibration data for static int8 and GPTQ: tokenized text turned into real model feeds.

A with-past decoder has `past_key_values.*` inputs; a reader that omits them makes `quantize_static` fail
("missing past_key_values"). We feed both shapes the model sees at run time: a prefill with an empty cache,
and a one-token decode step whose cache is the fp32 model's real `present.*` from that prefill, so the
calibrated ranges cover the KV path too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.runtime import LOGITS_TO_KEEP

if TYPE_CHECKING:
    from collections.abc import Iterator

    from onnxruntime import InferenceSession
    from onnxruntime.quantization import CalibrationDataReader

    from edgekit.runtime import Decoder

log = logging.getLogger(__name__)

MAX_TOKENS = 128


def token_sequences(folder: Path, texts: list[str], n: int, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Up to `n` token id lists of 8..max_tokens tokens from `texts` (short lines are joined)."""
    from edgekit.runtime import load_tokenizer

    tok = load_tokenizer(folder)
    seqs: list[list[int]] = []
    buf: list[int] = []
    for text in texts:
        buf += tok.encode(text, add_special_tokens=False).ids
        if len(buf) >= 16:
            seqs.append(buf[:max_tokens])
            buf = []
        if len(seqs) >= n:
            break
    if not seqs and buf:
        seqs.append(buf[:max_tokens])
    return seqs


def decoder_feeds(session: InferenceSession, seqs: list[list[int]]) -> list[dict[str, np.ndarray]]:
    """Prefill feeds (empty cache) and decode-step feeds (real cache from `session`, an fp32 decoder)."""
    from edgekit.runtime import Decoder

    dec = Decoder(session)
    feeds: list[dict[str, np.ndarray]] = []
    for seq in seqs:
        ids = np.asarray(seq, dtype=np.int64)[None, :]
        split = max(1, len(seq) - 1)
        feeds.append(_decoder_feed(dec, ids[:, :split], None, 0))
        if dec.with_past and len(seq) > 1:
            _, cache = dec.forward(ids[:, :split], None, 0)
            feeds.append(_decoder_feed(dec, ids[:, split:split + 1], cache, split))
    return feeds


def _decoder_feed(dec: Decoder, ids: np.ndarray, past: dict[str, np.ndarray] | None, past_len: int) -> dict[str, np.ndarray]:
    batch, seq = ids.shape
    feed: dict[str, np.ndarray] = {"input_ids": ids.astype(np.int64)}
    if "attention_mask" in dec.input_names:
        feed["attention_mask"] = np.ones((batch, past_len + seq), dtype=np.int64)
    if "position_ids" in dec.input_names:
        feed["position_ids"] = np.arange(past_len, past_len + seq, dtype=np.int64)[None, :]
    if dec.with_past:
        feed.update(past if past is not None else dec.empty_past(batch))
    # Every position's logits, to calibrate the lm_head on what fidelity runs: the graph's default (0) where it
    # has one; quantizers that check feeds against the graph's inputs reject an overridable initializer.
    if dec.binds_keep_last:
        feed[LOGITS_TO_KEEP] = np.zeros(1, dtype=np.int64)
    return feed


def encoder_feeds(session: InferenceSession, seqs: list[list[int]]) -> list[dict[str, np.ndarray]]:
    names = {i.name for i in session.get_inputs()}
    feeds = []
    for seq in seqs:
        ids = np.asarray(seq, dtype=np.int64)[None, :]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        feeds.append({k: v for k, v in feed.items() if k in names})
    return feeds


def model_feeds(session: InferenceSession, task: str, seqs: list[list[int]]) -> list[dict[str, np.ndarray]]:
    return decoder_feeds(session, seqs) if task == "text-generation" else encoder_feeds(session, seqs)


def make_reader(feeds: list[dict[str, np.ndarray]]) -> CalibrationDataReader:
    """An onnxruntime CalibrationDataReader over prepared feeds (re-iterable: GPTQ deep-copies it)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = feeds
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(self.feeds):
                return None
            self.pos += 1
            return self.feeds[self.pos - 1]

        def rewind(self) -> None:
            self.pos = 0

        def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
            return iter(self.feeds)

    return Reader()

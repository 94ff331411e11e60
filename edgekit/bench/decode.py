"""Decode-path fidelity: what users run is KV-cache decode, not the teacher-forced prefill that `fidelity` checks.

For each prompt the source (PyTorch, its own KV cache) continues greedily. The variant then
- continues greedily through its own runtime path (`Decoder.tokens`: prefill, then one cached step per token, the
  shared-buffer cache where the graph has one): the tokens matched before the first divergence are the user-visible
  figure;
- steps through its KV cache fed the source's continuation (teacher-forced decode), so every step compares the two
  distributions on the same prefix: KLD and top-1 agreement on decode steps.
Prompts are independent, so intervals resample whole prompts (`n_windows` = prompts).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit import progress
from edgekit.bench.fidelity import CausalStats, causal_stats, eval_documents, metric

if TYPE_CHECKING:
    from pathlib import Path

    from onnxruntime import InferenceSession
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.runtime import Decoder
    from edgekit.source import SourceModel

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = 8
DEFAULT_PROMPT_TOKENS = 32
DEFAULT_NEW_TOKENS = 32


def decode_prompts(tokenizer: PreTrainedTokenizerBase, eval_data: Path | None, n: int, length: int) -> list[list[int]]:
    """The first `length` tokens of the first `n` documents long enough to give them."""
    out: list[list[int]] = []
    for doc in eval_documents(eval_data):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == n:
            break
    return out


def source_greedy(model: Module, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and the logits each was picked from ([new_tokens, vocab]), through the model's KV cache."""
    import torch

    tokens: list[int] = []
    rows = []
    with torch.inference_mode():
        out = model(torch.tensor([prompt], dtype=torch.long), use_cache=True)
        for _ in range(new_tokens):
            logits = out.logits[0, -1].float().numpy()
            rows.append(logits)
            tokens.append(int(logits.argmax()))
            out = model(
                torch.tensor([[tokens[-1]]], dtype=torch.long),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return tokens, np.stack(rows)


def variant_forced(decoder: Decoder, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """The variant's logits at each decode step, fed `continuation` through its KV cache ([len, vocab])."""
    if not decoder.with_past:
        raise ValueError("the variant graph has no KV cache inputs: there is no decode path to check")
    logits, cache = decoder.forward(np.asarray([prompt], dtype=np.int64), None, 0)
    rows = [logits[0, -1]]
    for step, tok in enumerate(continuation[:-1]):
        logits, cache = decoder.forward(np.asarray([[tok]], dtype=np.int64), cache, len(prompt) + step)
        rows.append(logits[0, -1])
    return np.stack(rows).astype(np.float32)


def matched_prefix(reference: list[int], produced: list[int]) -> int:
    """Tokens equal before the first divergence."""
    n = 0
    for a, b in zip(reference, produced, strict=False):
        if a != b:
            break
        n += 1
    return n


def summarize_decode(matched: list[int], new_tokens: int, steps: list[CausalStats]) -> dict[str, Any]:
    """Per-prompt matched prefixes and per-step stats → metrics with intervals over prompts."""
    frac = np.asarray(matched, dtype=np.float64) / new_tokens
    n = len(frac)
    st = CausalStats.concat(steps)
    units = st.units()
    return {
        "match_fraction": metric(lambda i: float(frac[i].mean()), n),
        "matched_tokens_mean": metric(lambda i: float(frac[i].mean() * new_tokens), n),
        "full_match_rate": metric(lambda i: float((frac[i] == 1.0).mean()), n),
        "kld_mean": metric(lambda i: float(st.kld[i].mean()), len(st.kld), units),
        "top1_agreement": metric(lambda i: float(st.top1[i].mean()), len(st.kld), units),
    }


def decode_check(variant_session: InferenceSession, outputs: SourceOutputs) -> dict[str, Any] | None:
    """The `decode` block of the report from the source's cached greedy continuations; None when there is nothing
    to check (no prompts, no KV cache)."""
    from edgekit.runtime import Decoder

    spec = outputs.meta.get("decode")
    decoder = Decoder(variant_session)
    if not spec or not decoder.with_past:
        if spec:
            log.warning("the variant has no KV cache inputs: decode-path check skipped")
        return None
    if not spec["prompts"]:
        log.warning("no eval document has %d tokens for a decode prompt: decode-path check skipped", spec["prompt_tokens"])
        return None
    new_tokens = int(spec["new_tokens"])
    prompts, continuations = outputs.array("decode_prompts"), outputs.array("decode_tokens")
    ref_logits = outputs.array("decode_logits")
    matched, steps = [], []
    with progress.stage("bench: decode path", total=len(prompts)) as stage:
        for i in range(len(prompts)):
            prompt, ref_tokens = prompts[i].tolist(), continuations[i].tolist()
            # Fed no EOS set: both sides run the full length, so an early stop cannot count as a match.
            produced = list(decoder.tokens(prompt, new_tokens))
            matched.append(matched_prefix(ref_tokens, produced))
            got = variant_forced(decoder, prompt, ref_tokens)
            steps.append(causal_stats(np.asarray(ref_logits[i]), got, np.asarray(ref_tokens)))
            stage.advance()
    block = summarize_decode(matched, new_tokens, steps)
    path = "kv-cache, shared buffer" if decoder.shared_kv else "kv-cache, numpy feeds"
    return {"prompts": len(prompts), "prompt_tokens": int(spec["prompt_tokens"]), "new_tokens": new_tokens,
            "greedy": True, "path": path, "matched_tokens": matched, "metrics": block}


def measure_decode(variant_session: InferenceSession, source: SourceModel, eval_data: Path | None,
                   prompts: int = DEFAULT_PROMPTS, new_tokens: int = DEFAULT_NEW_TOKENS, *,
                   outputs: SourceOutputs | None = None, eval_tokens: int = 2048) -> dict[str, Any] | None:
    """`decode_check` against the source's greedy continuations (PyTorch fp32, 1 thread, cached: bench.sourceref)."""
    from edgekit.bench.sourceref import source_outputs

    if source.task != "text-generation" or prompts <= 0:
        return None
    if outputs is None:
        outputs = source_outputs(source, eval_data, eval_tokens, prompts, new_tokens=new_tokens)
    return decode_check(variant_session, outputs)

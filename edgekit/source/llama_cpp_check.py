"""Optional cross-check of a GGUF source against llama.cpp itself (llama-cpp-python, an extra: never required).

The converted PyTorch model and llama.cpp read the same GGUF; on the same token ids their next-token
distributions must agree closely (llama.cpp runs the quantized weights, so not exactly).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.source import SourceModel

log = logging.getLogger(__name__)
TOKENS = 256


def cross_check(gguf: Path, source: SourceModel, texts: list[str]) -> list[Any] | None:
    """[Check] for top-1 agreement and KLD vs llama.cpp, or None when llama_cpp is not importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    import numpy as np
    import torch
    from llama_cpp import Llama

    from edgekit.source.integrity import LLAMA_CPP_KLD_MAX, LLAMA_CPP_TOP1_MIN, Check, eval_ids

    tokenizer = source.load_tokenizer()
    ids, _, _ = eval_ids(tokenizer, texts, TOKENS)
    llm = Llama(model_path=str(gguf), n_ctx=len(ids) + 8, logits_all=True, n_threads=1, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.inference_mode():
        ours = source.load_model()(torch.tensor([ids])).logits[0].double().numpy()
    p_log = ours - np.logaddexp.reduce(ours, axis=-1, keepdims=True)
    q_log = theirs - np.logaddexp.reduce(theirs, axis=-1, keepdims=True)
    kld = float(np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=-1)))
    top1 = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    log.info("llama.cpp cross-check on %d tokens: top-1 %.3f, KLD %.4f", len(ids), top1, kld)
    return [
        Check(
            "llama_cpp.top1_agreement",
            top1 >= LLAMA_CPP_TOP1_MIN,
            round(top1, 4),
            f">= {LLAMA_CPP_TOP1_MIN}",
            f"{len(ids)} tokens",
        ),
        Check("llama_cpp.kld_mean", kld <= LLAMA_CPP_KLD_MAX, round(kld, 5), f"<= {LLAMA_CPP_KLD_MAX}"),
    ]

"""worker.py's engines for the peers, each run by its own venv's interpreter (benchmarks/peers.py builds them).

`llama-gen`: llama-cpp-python's `Llama.generate` (llama.cpp's eval loop, greedy sampler), fed the prompt ids.
`ov-gen`: optimum-intel's `OVModelForCausalLM.generate` on OpenVINO's CPU plugin with its default
precision hints (recorded: on a bf16-capable CPU OpenVINO may compute in bf16 even for an fp32 model).
Both take the same token ids as every other engine (never text) and the same thread count.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from worker import _threads, hf_generate_loop, save_logits


def llama_gen(spec: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp import Llama

    t = _threads(spec)
    logits = bool(spec.get("logits_out"))
    ctx = (
        max(len(w) for w in spec["windows"]) if logits else len(spec["prompt"]) + int(spec["new_tokens"]) + 8
    )
    llm = Llama(
        spec["model"],
        n_ctx=ctx,
        n_batch=512,
        n_threads=t,
        n_threads_batch=t,
        logits_all=logits,
        verbose=False,
    )
    if logits:

        def per_window() -> Any:
            for w in spec["windows"]:
                llm.reset()
                llm.eval(w)
                yield np.array(llm.scores[: len(w)], dtype=np.float32)

        save_logits(per_window(), spec["windows"], spec["logits_out"])
        return {}
    n = int(spec["new_tokens"])
    ttft, tps = [], []
    for i in range(spec["runs"] + 1):
        llm.reset()  # else generate() reuses the previous run's cache for the matching prompt prefix
        tokens: list[int] = []
        stamps: list[float] = []
        t0 = time.perf_counter()
        for tok in llm.generate(spec["prompt"], top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            stamps.append(time.perf_counter())
            tokens.append(int(tok))
            if len(tokens) == n:
                break
        if i:
            ttft.append(stamps[0] - t0)
            tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return {"ttft_s": ttft, "decode_tps": tps, "tokens": tokens}


def ov_gen(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from optimum.intel import OVModelForCausalLM

    torch.set_num_threads(1)  # only the generate loop's glue runs in torch; OpenVINO has its own pool
    t = _threads(spec)
    # CACHE_DIR "": no compiled-blob cache written into the cached model folder (the first run would differ).
    model = OVModelForCausalLM.from_pretrained(
        spec["model"], ov_config={"INFERENCE_NUM_THREADS": str(t), "CACHE_DIR": ""}
    )
    info = _ov_properties(model)
    with torch.inference_mode():
        if spec.get("logits_out"):
            wins = spec["windows"]
            gen = (
                model(input_ids=torch.tensor([w]), attention_mask=torch.ones(1, len(w), dtype=torch.long))
                .logits[0]
                .float()
                .numpy()
                for w in wins
            )
            save_logits(gen, wins, spec["logits_out"])
            return {"runtime_info": info}
        return {**hf_generate_loop(model, torch, spec), "runtime_info": info}


def _ov_properties(model: Any) -> dict[str, str]:
    compiled = getattr(getattr(model, "request", None), "get_compiled_model", None)
    out: dict[str, str] = {}
    if compiled is None:
        return out
    cm = compiled()
    for key in (
        "INFERENCE_PRECISION_HINT",
        "KV_CACHE_PRECISION",
        "INFERENCE_NUM_THREADS",
        "PERFORMANCE_HINT",
    ):
        try:
            out[key] = str(cm.get_property(key))
        except RuntimeError:
            continue
    return out


ENGINES = {"llama-gen": llama_gen, "ov-gen": ov_gen}

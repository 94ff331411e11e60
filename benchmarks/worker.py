"""One runtime in one process: `python benchmarks/worker.py SPEC.json` prints one JSON line of results.

Torch and onnxruntime in one process distort each other's timings (two thread pools, two allocators), so
run.py starts this script once per variant. Engines: `torch-gen` (transformers generate), `ort-gen`
(edgekit.runtime.Decoder), `genai-gen` (onnxruntime-genai, run by the separate venv's interpreter),
`torch-enc` / `ort-enc` (a feature-extraction batch). Generation workers can also write fidelity inputs:
`torch-gen` saves reference logits, `ort-gen` compares its logits with them after timing.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _threads(spec: dict[str, Any]) -> int:
    return int(spec.get("threads") or 1)


def _torch(threads: int = 1) -> Any:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return torch


def save_logits(per_window: Iterator[np.ndarray], windows: list[list[int]], path: str) -> None:
    """Write each window's logits but the last row (it predicts nothing we hold) into one [n, vocab] npy,
    window after window, so the whole set (4,096 × 49,152 floats) is never in memory at once."""
    n = sum(len(w) - 1 for w in windows)
    out: Any = None
    row = 0
    for w, lg in zip(windows, per_window, strict=True):
        if lg.shape[0] != len(w):
            raise RuntimeError(
                f"{lg.shape[0]} logit rows for a {len(w)}-token window (last-token logits only?)"
            )
        if out is None:
            out = np.lib.format.open_memmap(
                path + ".tmp.npy", mode="w+", dtype=np.float32, shape=(n, lg.shape[1])
            )
        out[row : row + len(w) - 1] = lg[:-1]
        row += len(w) - 1
    out.flush()
    del out
    os.replace(path + ".tmp.npy", path)


def clock_streamer(stamps: list[float]) -> Any:
    """A transformers streamer that stamps the time of every put() (the prompt once, then each new token)."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):  # type: ignore[misc]
        def put(self, value: Any) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    return Clock()


def hf_generate_loop(model: Any, torch: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """transformers' generate on any model class that has it (PyTorch, optimum-intel's OpenVINO model)."""
    stamps: list[float] = []
    ids = torch.tensor([spec["prompt"]], dtype=torch.long)
    n = int(spec["new_tokens"])
    ttft, tps = [], []
    for i in range(spec["runs"] + 1):
        stamps.clear()
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            streamer=clock_streamer(stamps),
            pad_token_id=0,
        )
        new = stamps[1:]  # put() gets the prompt first
        if i:  # run 0 warms up
            ttft.append(new[0] - t0)
            tps.append((len(new) - 1) / (new[-1] - new[0]))
    return {"ttft_s": ttft, "decode_tps": tps, "tokens": [int(t) for t in out[0, len(spec["prompt"]) :]]}


def torch_gen(spec: dict[str, Any]) -> dict[str, Any]:
    torch = _torch(_threads(spec))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["hf"], torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        if spec.get("logits_out"):
            wins = spec["windows"]
            gen = (model(torch.tensor([w], dtype=torch.long)).logits[0].float().numpy() for w in wins)
            save_logits(gen, wins, spec["logits_out"])
            return {}
        return hf_generate_loop(model, torch, spec)


def ort_gen(spec: dict[str, Any]) -> dict[str, Any]:
    from edgekit.runtime import Decoder, make_session

    dec = Decoder(make_session(Path(spec["model"]), threads=_threads(spec)))
    genai_cfg = Path(spec["model"]).parent / "genai_config.json"
    if genai_cfg.is_file():
        _fix_head_dim(dec, json.loads(genai_cfg.read_text())["model"]["decoder"]["head_size"])
    if spec.get("logits_out"):
        save_logits((dec.logits(w) for w in spec["windows"]), spec["windows"], spec["logits_out"])
        return {}
    ttft, tps = [], []
    for i in range(spec["runs"] + 1):
        res = dec.generate(spec["prompt"], int(spec["new_tokens"]))
        if i:
            ttft.append(res.ttft_s)
            tps.append(len(res.step_s) / sum(res.step_s))
    from edgekit.runtime import hugepages

    info = {"huge_pages_mib": hugepages.anon_huge_mib(), "thp_mode": hugepages.thp_mode(),
            "huge_pages_enabled": hugepages.enabled()}
    return {"ttft_s": ttft, "decode_tps": tps, "tokens": [int(t) for t in res.tokens], "runtime_info": info}


def _fix_head_dim(dec: Any, head_size: int) -> None:
    """The builder's graph leaves the cache's head dim symbolic ('kv_cache_dim'); an empty past needs it."""
    dec.past = [
        (name, [*shape[:-1], head_size] if not isinstance(shape[-1], int) else shape, dtype)
        for name, shape, dtype in dec.past
    ]


def genai_gen(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime_genai as og

    cfg = og.Config(spec["model"])
    t = _threads(spec)
    opts = {"intra_op_num_threads": t, "inter_op_num_threads": 1}
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    model = og.Model(cfg)
    n, prompt = int(spec["new_tokens"]), spec["prompt"]
    ttft, tps = [], []
    for i in range(spec["runs"] + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + n, min_length=len(prompt) + n)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)  # prefill
        gen.generate_next_token()
        stamps = [time.perf_counter()]
        produced = 1
        while not gen.is_done() and produced < n:
            gen.generate_next_token()
            stamps.append(time.perf_counter())
            produced += 1
        tokens = list(gen.get_sequence(0))[len(prompt) :]
        if i:
            ttft.append(stamps[0] - t0)
            tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        del gen
    return {"ttft_s": ttft, "decode_tps": tps, "tokens": [int(t) for t in tokens]}


def _enc_batches(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(spec["batches"])
    return data["ids"], data["mask"]


def torch_enc(spec: dict[str, Any]) -> dict[str, Any]:
    torch = _torch(_threads(spec))
    from transformers import AutoModel

    from edgekit.runtime import pool

    model = AutoModel.from_pretrained(spec["hf"], torch_dtype=torch.float32).eval()
    ids, mask = _enc_batches(spec)
    with torch.inference_mode():

        def run(b: int) -> np.ndarray:
            out = model(input_ids=torch.from_numpy(ids[b]), attention_mask=torch.from_numpy(mask[b]))
            return pool(out.last_hidden_state.float().numpy(), mask[b])

        return _enc_loop(run, spec, len(ids))


def ort_enc(spec: dict[str, Any]) -> dict[str, Any]:
    from edgekit.runtime import Encoder, make_session

    enc = Encoder(make_session(Path(spec["model"]), threads=_threads(spec)), "feature-extraction")
    ids, mask = _enc_batches(spec)
    return _enc_loop(lambda b: enc.run(ids[b], mask[b]), spec, len(ids))


def _enc_loop(run: Any, spec: dict[str, Any], n_batches: int) -> dict[str, Any]:
    run(0)  # warm-up
    lat = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        run(0)  # batch 0 is the timed 8×128 batch
        lat.append(time.perf_counter() - t0)
    emb = np.concatenate([run(b) for b in range(n_batches)])
    np.save(spec["embeddings_out"], emb.astype(np.float32))
    return {"latency_s": lat}


def _vm_hwm_mb() -> float | None:
    # Not ru_maxrss: Linux carries it across fork+exec, so every worker would report its parent's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


ENGINES = {
    "torch-gen": torch_gen,
    "ort-gen": ort_gen,
    "genai-gen": genai_gen,
    "torch-enc": torch_enc,
    "ort-enc": ort_enc,
}


def _engine(name: str) -> Any:
    if name in ENGINES:
        return ENGINES[name]
    import peer_engines  # llama.cpp / OpenVINO: only importable in their own venvs

    return peer_engines.ENGINES[name]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    t0 = time.perf_counter()
    out = _engine(spec["engine"])(spec)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    for key in ("ttft_s", "decode_tps", "latency_s"):
        if out.get(key):
            out[key + "_median"] = statistics.median(out[key])
    out["peak_rss_mb"] = _vm_hwm_mb()
    print("@bench " + json.dumps(out))


if __name__ == "__main__":
    main()

"""Fidelity and size of every quantization method on a real exported model, vs its fp32 export.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quant_fidelity.py /tmp/smol-fp32 -o /tmp/quant-fidelity \
        [--variants int8-weight,int4-hqq] [--tokens 512]

The fp32 folder comes from `edgekit export example:smollm2-135m --target x86-avx2 -o /tmp/smol-fp32`.
Held-out text: `edgekit.data.lee_test()` (Lee corpus test split, needs gensim), windows of 128 tokens, full forward with
an empty cache; then a KV-cache check (prefill + decode steps must pick the same tokens as a full forward).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

# name → (method, target, overrides, compress options)
VARIANTS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "fp16": ("fp16", "cuda", {}, {}),
    "int8-weight": ("int8-weight", "x86-avx2", {}, {}),
    "int8-weight+emb4": ("int8-weight", "x86-avx2", {"embed_bits": 4}, {}),
    "int8-dynamic": ("int8-dynamic", "x86-avx2", {}, {}),
    "int8-dynamic-nohead": ("int8-dynamic", "x86-avx2", {"keep_fp": ("lm_head",)}, {}),
    "int8-static": ("int8-static", "x86-avx2", {}, {"calibration_samples": 8}),
    "int4-rtn": ("int4-rtn", "x86-avx2", {}, {}),
    "int4-rtn-b16": ("int4-rtn", "x86-avx2", {"block_size": 16}, {}),
    "int4-hqq": ("int4-hqq", "x86-avx2", {}, {}),
    "int4-hqq-b16": ("int4-hqq", "x86-avx2", {"block_size": 16}, {}),
    "int4-gptq": ("int4-gptq", "x86-avx2", {}, {"calibration_samples": 4}),
    # accuracy_level 0: MatMulNBits computes in float instead of quantizing activations to int8 (level 4).
    "int8-weight-acc0": ("int8-weight", "x86-avx2", {"accuracy_level": 0}, {}),
    "int8-weight+emb4-acc0": ("int8-weight", "x86-avx2", {"accuracy_level": 0, "embed_bits": 4}, {}),
    "int4-hqq-acc0": ("int4-hqq", "x86-avx2", {"accuracy_level": 0}, {}),
    "int4-hqq-acc0-emb0": ("int4-hqq", "x86-avx2", {"accuracy_level": 0, "embed_bits": 0}, {}),
    "int4-gptq-acc0": ("int4-gptq", "x86-avx2", {"accuracy_level": 0}, {"calibration_samples": 4}),
}


def eval_windows(folder: Path, tokens: int, window: int = 128) -> list[list[int]]:
    from edgekit.data import lee_test
    from edgekit.runtime import load_tokenizer

    tok = load_tokenizer(folder)
    ids: list[int] = []
    for text in lee_test():  # the Lee test split, as in the figures this script has published
        ids += tok.encode(text, add_special_tokens=False).ids
        if len(ids) >= tokens:
            break
    ids = ids[:tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]


def kv_check(session: Any, seq: list[int], steps: int = 8) -> float:
    """Fraction of decode steps whose greedy token (with cache) equals the full-forward argmax."""
    from edgekit.runtime import Decoder

    dec = Decoder(session)
    prompt = np.asarray(seq[:16], dtype=np.int64)[None, :]
    logits, cache = dec.forward(prompt, None, 0)
    ids = list(seq[:16])
    same = 0
    for _ in range(steps):
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        logits, cache = dec.forward(np.asarray([[nxt]], dtype=np.int64), cache, len(ids) - 1)
        full = dec.logits(ids)
        same += int(full[-1].argmax() == logits[0, -1].argmax())
    return same / steps


def measure(ref: Any, var: Any, windows: list[list[int]]) -> dict[str, float]:
    from edgekit.compress.checks import decoder_agreement

    return decoder_agreement(ref, var, windows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("/tmp/quant-fidelity"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()

    from edgekit.artifact import OnnxArtifact
    from edgekit.catalog import load_target
    from edgekit.compress import compress, method_spec

    parent = OnnxArtifact.load(args.fp32)
    ref = parent.session()
    windows = eval_windows(parent.path, args.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in args.variants.split(","):
        method, target_name, overrides, options = VARIANTS[name]
        target = load_target(target_name)
        t0 = time.perf_counter()
        variant = compress(parent, method_spec(method, target, **overrides), target, args.out / name, **options)
        meta = variant.meta
        row = {"size_mb": meta["size_mb"], "size_ratio": meta["size_ratio"], "compress_s": round(time.perf_counter() - t0, 1),
               "calib_check": meta["check"], "speed": meta["speed"]["cases"], "warnings": meta["warnings"],
               "counts": meta["nodes"]["counts"], "peak_rss_mb": meta["peak_rss_mb"]}
        session = variant.session()
        row.update(measure(ref, session, windows))
        row["kv_cache_consistency"] = kv_check(session, windows[0])
        results[name] = row
        results_file.write_text(json.dumps(results, indent=2))
        print(f"{name:22s} size {row['size_ratio']:.3f}x top1 {row['top1_agreement']:.4f} kld {row['kld_mean']:.5f} "
              f"kv {row['kv_cache_consistency']:.2f} ({row['compress_s']} s)", flush=True)
        del session


if __name__ == "__main__":
    main()

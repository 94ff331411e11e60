"""Gemma-3 (text): the fused writer's graph vs optimum's traced one after `compress int4-rtn` (1 thread).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/gemma3_fused.py -o /tmp/g3bench [--rounds 5] [--size 270m]

Source: the tiny gemma3 of tests/tiny.py (4 layers, hidden 64, all sliding with a 64 window), or with --size 270m
the same config at Gemma-3 270M's layer sizes (18 layers, hidden 640, 4 heads / 1 KV head of 256, a global layer
every 6th, window 512, tied lm_head; vocab stays 512, weights random), or --source DIR. Both graphs
are exported from the same source and quantized the same way (target x86-avx2's int4-rtn); the two decoders are
timed in interleaved rounds, a 64-token prompt then 64 greedy tokens; tok/s = 1 / median step, TTFT = prefill +
first token. Prints nodes per graph, tok/s per round, the median ratio, and the 1-minute host load before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def source_folder(out: Path, size: str) -> Path:
    """tests/tiny.py's gemma3, or (270m) its config at Gemma-3 270M's layer sizes with random weights."""
    import shutil

    from tests.tiny import build_tiny

    tiny = out / "tiny-gemma3"
    if not (tiny / "config.json").is_file():
        build_tiny("gemma3", tiny)
    if size == "tiny":
        return tiny
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = out / "gemma3-270m-shaped"
    if not (folder / "config.json").is_file():
        cfg = {k: v for k, v in json.loads((tiny / "config.json").read_text()).items() if k != "layer_types"}
        cfg.update(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                   max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.02, rope_theta=1e6)
        torch.manual_seed(0)
        Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).save_pretrained(folder)
        for f in tiny.iterdir():
            if f.name not in ("config.json", "model.safetensors"):
                shutil.copy2(f, folder / f.name)
    return folder


def build(out: Path, source: Any, target: Any, graph: str) -> Path:
    from edgekit.compress import compress
    from edgekit.export import export

    folder = out / f"{graph}-int4rtn"
    if not (folder / "compress.json").is_file():
        fp32 = export(source, target, out / f"{graph}-fp32", graph=graph, parity=False)
        compress(fp32, "int4-rtn", target, folder, calibration_samples=2, checks_enabled=False)
    return folder


def nodes(folder: Path) -> int:
    import onnx

    return len(onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node)


def timings(folders: dict[str, Path], rounds: int) -> dict[str, dict[str, list[float]]]:
    from edgekit.runtime import Decoder, make_session

    prompt = list(range(100, 164))
    decs = {n: Decoder(make_session(f / "model.onnx", threads=1)) for n, f in folders.items()}
    out: dict[str, dict[str, list[float]]] = {n: {"tok_s": [], "ttft_ms": []} for n in folders}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for n, dec in decs.items():
            dec.generate(prompt, 2)  # warm-up
            g = dec.generate(prompt, 64)
            tokens[n] = g.tokens
            out[n]["tok_s"].append(round(1 / statistics.median(g.step_s), 1))
            out[n]["ttft_ms"].append(round(g.ttft_s * 1e3, 2))
    same = len({tuple(t) for t in tokens.values()}) == 1
    print(f"greedy tokens identical across graphs: {same}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("/tmp/g3bench"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--source", type=Path, default=None, help="a Gemma-3 HF folder (default: built, see --size)")
    ap.add_argument("--size", choices=["tiny", "270m"], default="tiny")
    args = ap.parse_args()

    import torch

    from edgekit.catalog import load_target
    from edgekit.source import load_source

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    src_dir = args.source or source_folder(args.out, args.size)
    target, source = load_target("x86-avx2"), load_source(str(src_dir))
    folders = {g: build(args.out, source, target, g) for g in ("fused", "optimum")}
    load_before = os.getloadavg()[0]
    res = timings(folders, args.rounds)
    load_after = os.getloadavg()[0]
    med = {n: statistics.median(r["tok_s"]) for n, r in res.items()}
    summary = {"nodes": {n: nodes(f) for n, f in folders.items()}, "timings": res,
               "fused_over_traced": round(med["fused"] / med["optimum"], 2),
               "host_load_1m": [round(load_before, 2), round(load_after, 2)]}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print("| graph | nodes | decode tok/s median (rounds) | TTFT ms median |\n|---|---|---|---|")
    for n, r in res.items():
        print(f"| {n} | {summary['nodes'][n]} | {med[n]:.0f} {r['tok_s']} | {statistics.median(r['ttft_ms']):.2f} |")
    print(f"fused / traced decode: {summary['fused_over_traced']}x; host load (1 min) {summary['host_load_1m']}")


if __name__ == "__main__":
    main()

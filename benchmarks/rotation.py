"""Rotation (edgekit.export.rotation) × quantization method on SmolLM2: KLD / top-1 vs PyTorch fp32, decode tok/s.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/rotation.py -o /tmp/rotation \
        [--configs off,residual,full-b32] [--methods int8-weight,int4-rtn] [--eval-tokens 2048] [--rounds 3]
    .venv/bin/python benchmarks/rotation.py -o /tmp/rotation --table     # the markdown table of what was measured

Fidelity: the bench's default eval (edgekit.bench.fidelity.eval_windows, built-in eval text, DEFAULT_EVAL_TOKENS),
PyTorch fp32 logits computed once, 95 % intervals resampling whole windows. Decode: 1 thread, a 32-token prompt and
64 greedy tokens, every variant once per round, rounds interleaved; tok/s = median over rounds of the per-step median,
and speed vs none = median over rounds of (variant / its method without rotation, same round). Each fp32 export
passes parity against PyTorch (its top-1 is recorded). Results: OUT/results.json (appended per config × method).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

SOURCE = "example:smollm2-135m"
# name → RotateSettings fields (mode "off" = today's export)
CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"mode": "off"},
    "residual-orth": {"mode": "residual", "basis": "orthogonal"},
    "residual": {"mode": "residual"},
    "heads": {"mode": "heads"},
    "full-b32": {"mode": "full", "block": 32},
    "full-b64": {"mode": "full", "block": 64},
    "full-b128": {"mode": "full", "block": 128},
    "full-orth-b32": {"mode": "full", "basis": "orthogonal", "block": 32},
    "full-all": {"mode": "full", "block": 0},  # all 1,536 down_proj inputs mixed (Paley 48 ⊗ Sylvester 32)
}
# method name here → (edgekit method, overrides); acc0 = float activations (the floor the int8 activations add to)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "int8-weight": ("int8-weight", {}),
    "int8-weight-acc0": ("int8-weight", {"accuracy_level": 0}),
    "int8-weight-fphead": ("int8-weight", {"lm_head_bits": 0}),  # diagnostic: the lm_head's share
    "int4-rtn": ("int4-rtn", {}),
    "int4-hqq": ("int4-hqq", {}),
}


def reference(model: Any, wins: list[tuple[int, list[int]]]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([w], dtype=torch.long)).logits[0].float().numpy() for _, w in wins]


def fidelity(session: Any, wins: list[tuple[int, list[int]]], refs: list[np.ndarray], save: Path) -> dict[str, Any]:
    """Summary with intervals; per-position KLD/top-1 saved to `save` for paired comparisons between variants."""
    from edgekit.bench.fidelity import CausalStats, causal_stats, summarize_causal
    from edgekit.runtime import Decoder

    dec = Decoder(session)
    parts = [causal_stats(ref[:-1], dec.logits(w)[:-1], np.asarray(w[1:])) for (_, w), ref in zip(wins, refs, strict=True)]
    st = CausalStats.concat(parts)
    np.savez(save, kld=st.kld, top1=st.top1)
    out = summarize_causal(st)
    keep = ("kld_mean", "top1_agreement", "kld_p99", "ppl_ratio")
    return {k: {f: v[f] for f in ("value", "ci95_low", "ci95_high")} for k, v in out.items() if k in keep}


def decode_rate(folder: Path, prompt: list[int], new_tokens: int) -> float:
    from edgekit.runtime import Decoder, make_session

    dec = Decoder(make_session(folder / "model.onnx", threads=1))
    dec.generate(prompt, 4)  # warm-up
    steps = dec.generate(prompt, new_tokens).step_s
    return 1.0 / statistics.median(steps)


def build(args: argparse.Namespace, name: str, source: Any, model: Any, target: Any) -> Path:
    from edgekit.export import export
    from edgekit.specs import RotateSettings

    out = args.out / f"export-{name}"
    if not (out / "export.json").is_file():
        export(source, target, out, rotate=RotateSettings(seed=args.seed, **CONFIGS[name]))
    return out


def paired_delta(out: Path, key: str, base: str, window: np.ndarray, samples: int = 1000) -> tuple[float, float, float]:
    """KLD(variant) - KLD(base) on the same positions, with a 95 % interval resampling whole windows."""
    a, b = (np.load(out / f"{k.replace(' / ', '-')}.npz")["kld"] for k in (key, base))
    d = a - b
    ids = np.unique(window)
    sums = np.asarray([d[window == i].sum() for i in ids])
    counts = np.asarray([(window == i).sum() for i in ids])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(ids), size=(samples, len(ids)))
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    return float(d.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def table(out: Path, eval_tokens: int | None) -> str:
    """Markdown: method × rotation → KLD, paired ΔKLD vs no rotation, top-1, decode tok/s (from results.json)."""
    from edgekit.bench.core import DEFAULT_EVAL_TOKENS
    from edgekit.bench.fidelity import eval_windows
    from edgekit.source import load_source

    source = load_source(SOURCE)
    wins = eval_windows(source.load_tokenizer(), source.config, None, eval_tokens or DEFAULT_EVAL_TOKENS)
    window = np.concatenate([np.full(len(w) - 1, i) for i, (_, w) in enumerate(wins)])
    results = json.loads((out / "results.json").read_text())
    lines = ["| method | rotation | KLD [95 % CI] | ΔKLD vs none, paired [95 % CI] | top-1 [95 % CI] | decode tok/s "
             "| speed vs none (paired rounds) |", "|---|---|---|---|---|---|---|"]
    order = {**{m: i for i, m in enumerate(METHODS)}, **{c: i for i, c in enumerate(CONFIGS)}}
    for key, r in sorted(results.items(), key=lambda kv: (order[kv[1]["method"]], order[kv[1]["config"]])):
        f, base = r["fidelity"], f"{r['method']} / off"
        k, t = f["kld_mean"], f["top1_agreement"]
        delta = "—" if key == base else "{:+.5f} [{:+.5f}, {:+.5f}]".format(*paired_delta(out, key, base, window))
        lines.append(f"| {r['method']} | {r['config']} | {k['value']:.5f} [{k['ci95_low']:.5f}, {k['ci95_high']:.5f}] "
                     f"| {delta} | {t['value']:.4f} [{t['ci95_low']:.3f}, {t['ci95_high']:.3f}] "
                     f"| {r.get('decode_tok_s', '—')} | {r.get('speed_vs_off') or '—'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--out", type=Path, default=Path("/tmp/rotation"))
    ap.add_argument("--configs", default="off,residual-orth,residual,heads,full-b32,full-b64,full-b128")
    ap.add_argument("--methods", default="int8-weight,int4-rtn")
    ap.add_argument("--eval-tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-speed", action="store_true", help="Fidelity only (e.g. for the float-activation floor).")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="Only print the markdown table of OUT/results.json.")
    args = ap.parse_args()
    if args.table:
        print(table(args.out, args.eval_tokens))
        return

    import torch

    from edgekit.artifact import OnnxArtifact
    from edgekit.bench.core import DEFAULT_EVAL_TOKENS
    from edgekit.bench.fidelity import eval_windows
    from edgekit.catalog import load_target
    from edgekit.compress import compress
    from edgekit.source import load_source

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    target = load_target("x86-avx2")
    source = load_source(SOURCE)
    model, tok = source.load_model(), source.load_tokenizer()
    wins = eval_windows(tok, source.config, None, args.eval_tokens or DEFAULT_EVAL_TOKENS)
    refs = reference(model, wins)
    variants: dict[str, Path] = {}
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        exported = OnnxArtifact.load(build(args, name, source, model, target))
        parity = exported.meta["parity"]
        for method in args.methods.split(","):
            key = f"{method} / {name}"
            folder = args.out / f"{method}-{name}"
            if not (folder / "compress.json").is_file():
                real, overrides = METHODS[method]
                compress(exported, real, target, folder, calibration_samples=2, checks_enabled=False, **overrides)
            variants[key] = folder
            if key not in results:
                row = fidelity(OnnxArtifact.load(folder).session(), wins, refs, args.out / f"{method}-{name}.npz")
                results[key] = {"config": name, "method": method, "rotation": exported.meta["rotation"],
                                "fp32_parity_top1": parity["top1_agreement"], "fidelity": row,
                                "positions": sum(len(w) - 1 for _, w in wins), "windows": len(wins)}
                results_file.write_text(json.dumps(results, indent=2))
            fid = results[key]["fidelity"]
            print(f"{key:32s} kld {fid['kld_mean']['value']:.5f} top1 {fid['top1_agreement']['value']:.4f} "
                  f"(fp32 parity top-1 {parity['top1_agreement']}) {time.perf_counter() - t0:.0f} s", flush=True)
    if args.no_speed:
        return
    prompt = wins[0][1][:32]
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, folder in variants.items():
            rates[key].append(decode_rate(folder, prompt, args.new_tokens))
    load = os.getloadavg()
    for key, r in rates.items():
        # Paired within a round (the host's load drifts between rounds): this variant over its method's "off".
        base = rates.get(f"{results[key]['method']} / off")
        ratios = [a / b for a, b in zip(r, base, strict=True)] if base else []
        results[key].update({"decode_tok_s": round(statistics.median(r), 1), "decode_rounds": [round(x, 1) for x in r],
                             "speed_vs_off": round(statistics.median(ratios), 3) if ratios else None,
                             "speed_vs_off_rounds": [round(x, 3) for x in ratios], "host_load_1m": round(load[0], 2)})
        print(f"{key:32s} decode {statistics.median(r):.1f} tok/s {[round(x, 1) for x in r]} "
              f"vs off {results[key]['speed_vs_off']}", flush=True)
    results_file.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

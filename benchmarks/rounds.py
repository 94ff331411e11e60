"""How run.py measures: worker processes, the fidelity pass, and interleaved timing rounds.

A *cell* is one variant at one thread count. Every round visits every cell once, in an order rotated by
len/rounds per round, each in a fresh process; samples keep their round number so a ratio's interval can resample
whole rounds (host noise within a round hits both sides of a ratio alike). Each round records the host's
load average and ISA flags when it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import analysis
import peers
import prepare

HERE = Path(__file__).resolve().parent


def _python(engine: str) -> str:
    venv = {
        "genai-gen": prepare.genai_venv,
        "llama-gen": peers.llama_venv,
        "ov-gen": peers.ov_venv,
    }.get(engine)
    return str(venv() / "bin" / "python") if venv else sys.executable


def run_worker(v: dict[str, Any], spec: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    threads = int(v.get("threads") or 1)
    spec_file = tmp / f"spec-{abs(hash((v['name'], threads)))}.json"
    model = str(Path(v["model"]).parent) if v["engine"] in ("genai-gen", "ov-gen") else v.get("model")
    spec_file.write_text(
        json.dumps({**spec, "engine": v["engine"], "model": model, "hf": v.get("hf"), "threads": threads})
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONWARNINGS": "ignore",
        "TRANSFORMERS_VERBOSITY": "error",
        # edgekit for the ort/torch engines; the peers' venvs only read worker.py's own helpers.
        "PYTHONPATH": os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [_python(v["engine"]), str(HERE / "worker.py"), str(spec_file)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    for line in proc.stdout.splitlines():
        if line.startswith("@bench "):
            result: dict[str, Any] = json.loads(line[len("@bench ") :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"exit {proc.returncode}: {tail[:300]}")


def window_fidelity(ref_file: Path, got_file: Path, windows: list[list[int]]) -> dict[str, Any]:
    """edgekit's causal fidelity over the windows, one resampling unit per window (positions inside a window
    are correlated), from two [n, vocab] logit files read one window at a time."""
    import numpy as np

    from edgekit.bench.fidelity import CausalStats, causal_stats, summarize_causal

    ref = np.load(ref_file, mmap_mode="r")
    got = np.load(got_file, mmap_mode="r")
    if ref.shape != got.shape:
        raise RuntimeError(f"logits {got.shape} vs reference {ref.shape}")
    parts, row = [], 0
    for w in windows:
        n = len(w) - 1
        parts.append(
            causal_stats(np.asarray(ref[row : row + n]), np.asarray(got[row : row + n]), np.asarray(w[1:]))
        )
        row += n
    return summarize_causal(CausalStats.concat(parts))


def fidelity_pass(variants: list[dict[str, Any]], spec: dict[str, Any], tmp: Path, timeout: float) -> None:
    """The baseline's logits on the eval windows, then each variant's, compared window by window. Untimed,
    one thread, before the rounds; a variant whose logits cannot be had keeps its timings and shows no fidelity."""
    base = next(v for v in variants if v.get("baseline"))
    ref = tmp / "ref_logits.npy"
    try:
        run_worker(base, {**spec, "logits_out": str(ref)}, tmp, timeout)
    except RuntimeError as exc:
        print(f"  fidelity reference FAILED: {exc}", flush=True)
        return
    for v in variants:
        # onnxruntime-genai exposes no full-sequence logits: genai_fidelity() lends it its graph's, after the rounds.
        if v.get("baseline") or v["status"] != "ok" or v["engine"] == "genai-gen":
            continue
        got = tmp / "variant_logits.npy"
        t0 = time.perf_counter()
        try:
            res = run_worker(v, {**spec, "logits_out": str(got)}, tmp, timeout)
            v["fidelity"] = window_fidelity(ref, got, spec["windows"])
            if res.get("runtime_info"):
                v["runtime_info"] = res["runtime_info"]
            top1 = v["fidelity"]["top1_agreement"]["value"]
            print(f"  fidelity {v['name']}: top-1 {top1:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        except (RuntimeError, OSError, ValueError) as exc:
            v["fidelity_error"] = str(exc)[:300]
            print(f"  fidelity {v['name']}: FAILED {exc}", flush=True)
        finally:
            got.unlink(missing_ok=True)


def round_record(r: int, order: list[dict[str, Any]]) -> dict[str, Any]:
    from edgekit.bench.hostinfo import host_info

    return {
        "round": r,
        "started": time.strftime("%H:%M:%S", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "isa_flags": host_info()["isa_flags"],
        "order": [f"{v['name']} @{v['threads']}t" for v in order],
    }


def timing_rounds(
    cells: list[dict[str, Any]], spec: dict[str, Any], args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    """args.rounds rounds over the cells, order rotated each round; returns the per-round host records."""
    records = []
    for r in range(args.rounds):
        live = [c for c in cells if c["status"] == "ok"]
        # Rotate by len/rounds, not by one: over the run each cell starts, ends and sits mid-round.
        k = (r * max(1, len(live) // args.rounds)) % len(live) if live else 0
        order = live[k:] + live[:k]
        rec = round_record(r + 1, order)
        t0 = time.perf_counter()
        for c in order:
            _one(c, spec, args, tmp, r + 1)
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        rec["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        records.append(rec)
    return records


def _one(c: dict[str, Any], spec: dict[str, Any], args: argparse.Namespace, tmp: Path, r: int) -> None:
    t0 = time.perf_counter()
    try:
        res = run_worker(c, {**spec, **c.get("_spec_extra", {})}, tmp, args.timeout)
    except RuntimeError as exc:  # a crashing variant is a result, not the end of the run
        c["status"], c["error"] = "failed", f"round {r}: {exc}"
        print(f"  round {r} {c['name']} @{c['threads']}t: FAILED {exc}", flush=True)
        return
    n = 0
    for key in ("ttft_s", "decode_tps", "latency_s"):
        c.setdefault(key, []).extend(res.get(key, []))
        n = max(n, len(res.get(key, [])))
    c.setdefault("sample_round", []).extend([r] * n)
    if "tokens" in res:
        c["tokens"] = res["tokens"]
    if res.get("runtime_info"):
        c["runtime_info"] = res["runtime_info"]
    c["peak_rss_mb"] = max(c.get("peak_rss_mb", 0), res.get("peak_rss_mb") or 0)
    print(
        f"  round {r} {c['name']} @{c['threads']}t: {time.perf_counter() - t0:.0f} s {_brief(res)}",
        flush=True,
    )


def _brief(res: dict[str, Any]) -> str:
    import statistics

    if res.get("decode_tps"):
        tps, ttft = statistics.median(res["decode_tps"]), statistics.median(res["ttft_s"])
        return f"decode {tps:.1f} tok/s, ttft {ttft * 1e3:.0f} ms"
    if res.get("latency_s"):
        return f"latency {statistics.median(res['latency_s']) * 1e3:.0f} ms"
    return ""


def genai_fidelity(llm: list[dict[str, Any]]) -> None:
    """The builder's model gets the fidelity of its own graph run through plain onnxruntime (same weights, same
    ops; onnxruntime-genai exposes no full-sequence logits), and whether both produced the same greedy tokens."""
    for genai in (v for v in llm if v["engine"] == "genai-gen" and v["status"] == "ok"):
        same = next(
            (
                v
                for v in llm
                if v["engine"] == "ort-gen"
                and v.get("model") == genai.get("model")
                and v["threads"] == genai["threads"]
            ),
            None,
        )
        if same is None or not same.get("fidelity"):
            continue
        genai["fidelity"] = same["fidelity"]
        genai["fidelity_via"] = "its ONNX graph through plain onnxruntime (edgekit.runtime.Decoder)"
        if genai.get("tokens") and same.get("tokens"):
            genai["same_greedy_tokens_as_plain_ort"] = genai["tokens"] == same["tokens"]


def ratios(variants: list[dict[str, Any]], rate: str | None, latency: str) -> None:
    """`vs_baseline_*` / `vs_peer_*`: speedups (> 1 is better) with 95 % intervals over rounds, against the
    reference cell at the same thread count."""
    for v in variants:
        base = next((b for b in variants if b.get("baseline") and b["threads"] == v["threads"]), None)
        peer = next((b for b in variants if b.get("peer") and b["threads"] == v["threads"]), None)
        for ref, tag in ((base, "vs_baseline"), (peer, "vs_peer")):
            if ref is None or not v.get(latency) or not ref.get(latency):
                continue
            v[f"{tag}_{latency}"] = analysis.ratio_ci(
                ref[latency], ref["sample_round"], v[latency], v["sample_round"]
            )
            if rate and v.get(rate) and ref.get(rate):
                v[f"{tag}_{rate}"] = analysis.ratio_ci(
                    v[rate], v["sample_round"], ref[rate], ref["sample_round"]
                )

"""`make bench`: edgekit's variants side by side with what a user would pick instead, as ratios on one host.

SmolLM2-135M decode tokens/s and TTFT (64-token prompt, 64 new tokens, greedy, 1 thread): PyTorch fp32 eager,
edgekit fp32 / int8 / int4 ONNX, and the onnxruntime-genai builder's int4 model; MiniLM-L6 latency per 8×128
batch: PyTorch fp32, `optimum-cli onnxruntime quantize --avx2`, edgekit int8-dynamic. Each runtime runs in
its own process (benchmarks/worker.py); rounds visit the variants in rotating order so host noise spreads
over all of them. Fidelity sits beside every speed figure, and each decode rate is set against its roofline
(measured bandwidth / bytes read per token). Writes benchmarks/results/<date>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import analysis  # noqa: E402
import prepare  # noqa: E402
import render  # noqa: E402

PROMPT_TOKENS = 64
NEW_TOKENS = 64
FIDELITY_TOKENS = 512
WINDOW = 256
ENC_BATCH, ENC_LEN, ENC_BATCHES = 8, 128, 8
LLM_METHODS = ("int8-weight", "int8-dynamic", "int4-rtn", "int4-hqq", "int4-gptq")


def _variant(name: str, group: str, engine: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "group": group, "engine": engine, "status": "ok", "error": None, **kw}


def _build(v: dict[str, Any], fn: Any, *args: Any) -> None:
    """Fill v['model'] from a prepare builder; a failure marks the variant failed, never aborts the run."""
    t0 = time.perf_counter()
    try:
        folder = fn(*args)
        v["model"] = str(prepare.model_file(folder))
        v["prepare_s"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # any builder failure is a reported result
        v["status"], v["error"] = "failed", f"prepare: {type(exc).__name__}: {str(exc)[:300]}"
    print(f"  prepared {v['name']}: {v['status']} {v.get('error') or ''}", flush=True)


def llm_variants(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Any]:
    import edgekit

    source = edgekit.load_source("example:smollm2-135m")
    out = [
        _variant("PyTorch fp32 eager", "llm", "torch-gen", hf=str(source.path), method="fp32", baseline=True)
    ]
    # edgekit's default decoder graph is the fused writer's; cache names carry the graph so they never mix.
    fp32 = _variant("edgekit fp32", "llm", "ort-gen", method="fp32")
    _build(fp32, prepare.edgekit_fp32, source, "smollm2-fused-fp32", "fused")
    out.append(fp32)
    for method in args.methods:
        out.append(_compressed(f"edgekit {method}", fp32, method, f"smollm2-fused-{method}"))
    if not args.skip_traced:
        # The same quantizer on optimum's traced graph: what the fused writer buys.
        traced = _variant("edgekit fp32, traced graph", "llm", "ort-gen", method="fp32")
        _build(traced, prepare.edgekit_fp32, source, "smollm2-traced-fp32", "optimum")
        out += [traced, _compressed("edgekit int4-rtn, traced graph", traced, "int4-rtn", "smollm2-traced-int4-rtn")]
    if not args.skip_genai:
        genai = _variant(
            f"ORT-GenAI {prepare.GENAI_VERSION} builder int4",
            "llm",
            "genai-gen",
            method="int4 (builder)",
            peer=True,
        )
        _build(genai, prepare.genai_int4, source.path)
        out.append(genai)
        if genai["status"] == "ok":
            # The same graph through edgekit's runtime: separates the graph's speed from the runtime's.
            out.append(
                _variant(
                    "builder int4 graph, edgekit runtime",
                    "llm",
                    "ort-gen",
                    method="int4 (builder)",
                    model=genai["model"],
                )
            )
    return out, source


def _compressed(name: str, fp32: dict[str, Any], method: str, cache_name: str) -> dict[str, Any]:
    v = _variant(name, "llm", "ort-gen", method=method)
    if fp32["status"] == "ok":
        _build(v, prepare.edgekit_compressed, Path(fp32["model"]).parent, method, cache_name)
    else:
        v["status"], v["error"] = "failed", "prepare: the fp32 export failed"
    return v


def enc_variants() -> tuple[list[dict[str, Any]], Any]:
    import edgekit

    source = edgekit.load_source("example:minilm-l6")
    out = [_variant("PyTorch fp32", "enc", "torch-enc", hf=str(source.path), method="fp32", baseline=True)]
    fp32 = _variant("edgekit fp32", "enc", "ort-enc", method="fp32")
    _build(fp32, prepare.edgekit_fp32, source, "minilm-fp32")
    opt32 = _variant("optimum-cli export fp32", "enc", "ort-enc", method="fp32")
    _build(opt32, prepare.optimum_fp32, source.path)
    avx2 = _variant("optimum-cli quantize --avx2", "enc", "ort-enc", method="int8 (optimum avx2)", peer=True)
    if opt32["status"] == "ok":
        _build(avx2, prepare.optimum_avx2, Path(opt32["model"]).parent)
    else:
        avx2["status"], avx2["error"] = "failed", "prepare: the optimum fp32 export failed"
    int8 = _variant("edgekit int8-dynamic", "enc", "ort-enc", method="int8-dynamic")
    if fp32["status"] == "ok":
        _build(
            int8,
            prepare.edgekit_compressed,
            Path(fp32["model"]).parent,
            "int8-dynamic",
            "minilm-int8-dynamic",
        )
    else:
        int8["status"], int8["error"] = "failed", "prepare: the fp32 export failed"
    return [*out, fp32, opt32, avx2, int8], source


def llm_inputs(source: Any) -> tuple[list[int], list[list[int]]]:
    """The prompt (first 64 eval tokens) and held-out fidelity windows (the next 512)."""
    from edgekit.bench.fidelity import eval_token_ids, windows

    ids = eval_token_ids(source.load_tokenizer(), None, PROMPT_TOKENS + FIDELITY_TOKENS)
    return ids[:PROMPT_TOKENS], windows(ids[PROMPT_TOKENS:], WINDOW)


def enc_inputs(source: Any, tmp: Path) -> Path:
    """ENC_BATCHES batches of ENC_BATCH eval sentences padded to ENC_LEN tokens; batch 0 is the timed one."""
    import numpy as np

    from edgekit.bench.fidelity import encoder_texts

    texts, _ = encoder_texts(None, 24 * ENC_BATCH * ENC_BATCHES, "feature-extraction")
    texts = texts[: ENC_BATCH * ENC_BATCHES]
    enc = source.load_tokenizer()(
        texts, padding="max_length", truncation=True, max_length=ENC_LEN, return_tensors="np"
    )
    n = len(texts) // ENC_BATCH
    path = tmp / "enc_batches.npz"
    np.savez(
        path,
        ids=enc["input_ids"][: n * ENC_BATCH].reshape(n, ENC_BATCH, ENC_LEN).astype(np.int64),
        mask=enc["attention_mask"][: n * ENC_BATCH].reshape(n, ENC_BATCH, ENC_LEN).astype(np.int64),
    )
    return path


def run_worker(v: dict[str, Any], spec: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    spec_file = tmp / f"spec-{abs(hash(v['name']))}.json"
    model = (
        str(Path(v["model"]).parent) if v["engine"] == "genai-gen" else v.get("model")
    )  # genai takes the folder
    spec_file.write_text(json.dumps({**spec, "engine": v["engine"], "model": model, "hf": v.get("hf")}))
    py = str(prepare.GENAI_VENV / "bin" / "python") if v["engine"] == "genai-gen" else sys.executable
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    try:
        proc = subprocess.run(
            [py, str(HERE / "worker.py"), str(spec_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    for line in proc.stdout.splitlines():
        if line.startswith("@bench "):
            result: dict[str, Any] = json.loads(line[len("@bench ") :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"exit {proc.returncode}: {tail[:300]}")


def measure(
    variants: list[dict[str, Any]],
    specs: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
    *,
    first: int = 1,
) -> None:
    """Rounds over the variants in rotating order; one fresh process per variant per round (`first`: the
    number the first round is logged as)."""
    live = [v for v in variants if v["status"] == "ok"]
    for r in range(args.rounds):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for v in order:
            if v["status"] != "ok":
                continue
            spec = dict(specs[v["group"]])
            if r > 0:  # fidelity once, in the first round
                spec.pop("fidelity_ref", None)
                spec.pop("fidelity_out", None)
            t0 = time.perf_counter()
            try:
                res = run_worker(v, spec, tmp, args.timeout)
            except Exception as exc:  # a crashing variant is a result, not the end of the run
                v["status"], v["error"] = "failed", f"round {r + first}: {exc}"
                print(f"  round {r + first} {v['name']}: FAILED {exc}", flush=True)
                continue
            for key in ("ttft_s", "decode_tps", "latency_s"):
                v.setdefault(key, []).extend(res.get(key, []))
            for key in ("fidelity", "tokens"):
                if key in res:
                    v[key] = res[key]
            v["peak_rss_mb"] = max(v.get("peak_rss_mb", 0), res.get("peak_rss_mb", 0))
            print(
                f"  round {r + first} {v['name']}: {time.perf_counter() - t0:.0f} s {_brief(res)}", flush=True
            )


def _brief(res: dict[str, Any]) -> str:
    if res.get("decode_tps"):
        return f"decode {statistics.median(res['decode_tps']):.1f} tok/s, ttft {statistics.median(res['ttft_s']) * 1e3:.0f} ms"
    if res.get("latency_s"):
        return f"latency {statistics.median(res['latency_s']) * 1e3:.0f} ms"
    return ""


def summarize(
    llm: list[dict[str, Any]],
    enc: list[dict[str, Any]],
    llm_config: dict[str, Any],
    bw: dict[str, Any],
    tmp: Path,
) -> None:
    """Medians, ratios vs the PyTorch baseline and the peer, roofline fractions, MiniLM cosines."""
    import numpy as np

    kv = analysis.kv_bytes_per_position(llm_config)
    mean_past = PROMPT_TOKENS + NEW_TOKENS / 2
    fp32_model = next((v.get("model") for v in llm if v["method"] == "fp32" and v.get("model")), None)
    for v in llm:
        model = v.get("model") or fp32_model  # PyTorch reads the same fp32 weights
        if model:
            v["bytes"] = analysis.weight_bytes_per_token(Path(model))
            v["roofline_tps"] = analysis.roofline_tps(
                v["bytes"]["weight_bytes"], kv, mean_past, bw["memory_bandwidth_gbps"]
            )
        if v.get("decode_tps"):
            v["decode_tps_median"] = statistics.median(v["decode_tps"])
            v["ttft_ms_median"] = statistics.median(v["ttft_s"]) * 1e3
            if v.get("roofline_tps"):
                v["roofline_fraction"] = v["decode_tps_median"] / v["roofline_tps"]
    _ratios(llm, "decode_tps_median", "ttft_ms_median")
    _genai_fidelity(llm)
    ref_file = tmp / "enc-PyTorch fp32.npy"
    ref = np.load(ref_file) if ref_file.is_file() else None
    for v in enc:
        if v.get("latency_s"):
            v["latency_ms_median"] = statistics.median(v["latency_s"]) * 1e3
        emb_file = tmp / f"enc-{v['name']}.npy"
        if ref is not None and emb_file.is_file() and v.get("latency_s"):
            v["cosine"] = analysis.cosine(ref, np.load(emb_file))
    _ratios(enc, None, "latency_ms_median")


def _genai_fidelity(llm: list[dict[str, Any]]) -> None:
    """The builder's model gets the fidelity of its own graph run through plain onnxruntime (same weights, same
    ops; onnxruntime-genai exposes no full-sequence logits), and whether both produced the same greedy tokens."""
    genai = next((v for v in llm if v["engine"] == "genai-gen" and v["status"] == "ok"), None)
    same = next(
        (v for v in llm if v["engine"] == "ort-gen" and genai and v.get("model") == genai.get("model")), None
    )
    if genai is None or same is None or not same.get("fidelity"):
        return
    genai["fidelity"] = same["fidelity"]
    genai["fidelity_via"] = "its ONNX graph through plain onnxruntime (edgekit.runtime.Decoder)"
    if genai.get("tokens") and same.get("tokens"):
        genai["same_greedy_tokens_as_plain_ort"] = genai["tokens"] == same["tokens"]


def _ratios(variants: list[dict[str, Any]], rate: str | None, latency: str) -> None:
    base = next((v for v in variants if v.get("baseline")), None)
    peer = next((v for v in variants if v.get("peer")), None)
    for v in variants:
        for ref, tag in ((base, "vs_baseline"), (peer, "vs_peer")):
            if ref is None or v.get(latency) is None or ref.get(latency) is None:
                continue
            v[f"{tag}_{latency}"] = ref[latency] / v[latency]  # speedup: > 1 is better
            if rate and v.get(rate) and ref.get(rate):
                v[f"{tag}_{rate}"] = v[rate] / ref[rate]


def profile_llm(llm: list[dict[str, Any]]) -> None:
    """onnxruntime's profiler over 16 decode steps of each ONNX variant (benchmarks/profile_decode.py)."""
    for v in llm:
        if v["status"] != "ok" or not v.get("model") or v["engine"] == "genai-gen":
            continue
        cmd = [sys.executable, str(HERE / "profile_decode.py"), v["model"], "--steps", "16"]
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            v["profile"] = json.loads(out.stdout[out.stdout.index("{") :])
        except (subprocess.SubprocessError, ValueError) as exc:
            v["profile"] = {"error": str(exc)[:200]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="one round of 3 runs per variant, results to <date>-quick.md"
    )
    p.add_argument("--rounds", type=int, default=None, help="processes per variant (default 2, quick 1)")
    p.add_argument("--runs", type=int, default=None, help="timed generations per process (default 3)")
    p.add_argument(
        "--methods", default=",".join(LLM_METHODS), help="edgekit methods for SmolLM2, comma-separated"
    )
    p.add_argument("--skip-genai", action="store_true", help="leave out the onnxruntime-genai builder")
    p.add_argument("--skip-llm", action="store_true")
    p.add_argument("--skip-traced", action="store_true", help="leave out the optimum-traced graph reference rows")
    p.add_argument(
        "--no-profile", action="store_true", help="skip the per-op decode profile of each ONNX variant"
    )
    p.add_argument("--skip-enc", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.runs = args.runs or 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.perf_counter()
    print("preparing models (cached under", prepare.cache_root(), ")", flush=True)
    llm, llm_source = llm_variants(args) if not args.skip_llm else ([], None)
    enc, enc_source = enc_variants() if not args.skip_enc else ([], None)
    bw_before = analysis.measure_bandwidth()
    with tempfile.TemporaryDirectory(prefix="edgekit-benchmarks-") as tmp_name:
        tmp = Path(tmp_name)
        specs: dict[str, dict[str, Any]] = {}
        if llm_source is not None:
            prompt, wins = llm_inputs(llm_source)
            specs["llm"] = {
                "prompt": prompt,
                "new_tokens": NEW_TOKENS,
                "runs": args.runs,
                "windows": wins,
                "fidelity_out": str(tmp / "ref_logits.npy"),
                "fidelity_ref": str(tmp / "ref_logits.npy"),
            }
        if enc_source is not None:
            specs["enc"] = {"batches": str(enc_inputs(enc_source, tmp)), "runs": max(10, args.runs * 4)}
        for v in enc:
            v["_spec_extra"] = {"embeddings_out": str(tmp / f"enc-{v['name']}.npy")}
        # The PyTorch baseline goes first in round 1: it writes the reference logits the others compare with.
        measure_all(llm, enc, specs, args, tmp)
        bw_after = analysis.measure_bandwidth()
        # The higher of two measurements: a busy moment lowers bandwidth, and a higher roof is the stricter one.
        bw = max(bw_before, bw_after, key=lambda b: b["memory_bandwidth_gbps"])
        summarize(llm, enc, llm_source.config if llm_source else {}, bw, tmp)
        if not args.no_profile:
            profile_llm(llm)
    results = {
        "schema": "edgekit/benchmarks@1",
        "started": started,
        "wall_s": round(time.perf_counter() - t0, 1),
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "settings": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "threads": 1,
            "rounds": args.rounds,
            "runs_per_round": args.runs,
            "fidelity_tokens": FIDELITY_TOKENS,
            "window": WINDOW,
            "encoder_batch": [ENC_BATCH, ENC_LEN],
        },
        "machine": analysis.machine(prepare.GENAI_VENV / "bin" / "python"),
        "bandwidth": {"before": bw_before, "after": bw_after, "used": bw},
        "llm": [{k: val for k, val in v.items() if not k.startswith("_")} for v in llm],
        "encoder": [{k: val for k, val in v.items() if not k.startswith("_")} for v in enc],
    }
    paths = render.write(results, args.out, suffix="-quick" if args.quick else "")
    print(paths["md"].read_text())
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


def measure_all(
    llm: list[dict[str, Any]],
    enc: list[dict[str, Any]],
    specs: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
) -> None:
    if llm:
        llm_specs = {"llm": specs["llm"]}
        base = [v for v in llm if v.get("baseline")]
        measure(base, {"llm": {**specs["llm"], "fidelity_ref": None}}, args_one(args), tmp)
        # Non-baseline variants read the reference; the baseline no longer writes it.
        rest = [v for v in llm if not v.get("baseline")]
        llm_specs["llm"] = {**specs["llm"], "fidelity_out": None}
        measure(rest, llm_specs, args_one(args), tmp)
        if args.rounds > 1:
            extra = argparse.Namespace(**{**vars(args), "rounds": args.rounds - 1})
            measure(
                llm,
                {"llm": {**specs["llm"], "fidelity_out": None, "fidelity_ref": None}},
                extra,
                tmp,
                first=2,
            )
    for v in enc:
        specs_v = {"enc": {**specs["enc"], **v["_spec_extra"]}}
        measure([v], specs_v, args_one(args), tmp)
    if enc and args.rounds > 1:
        for r in range(1, args.rounds):
            order = enc[r % len(enc) :] + enc[: r % len(enc)]
            for v in order:
                measure([v], {"enc": {**specs["enc"], **v["_spec_extra"]}}, args_one(args), tmp, first=r + 1)


def args_one(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rounds": 1})


if __name__ == "__main__":
    raise SystemExit(main())

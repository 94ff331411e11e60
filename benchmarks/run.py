"""`make bench`: edgekit's variants side by side with what a user would pick instead, as ratios on one host.

SmolLM2-135M decode tokens/s and TTFT (64-token prompt ids, 64 greedy tokens, 1 and 2 threads): PyTorch fp32
eager, edgekit fp32 / int8 / int4 ONNX, the onnxruntime-genai builder's int4 model, llama.cpp GGUF (f32, Q8_0,
Q4_0, Q4_K_M, Q4_1) and OpenVINO (fp32, int8, int4), each in its own runtime loop; MiniLM-L6 latency per
8×128 batch: PyTorch fp32, optimum-cli's strongest quantize preset for this host, edgekit int8-dynamic.
Each runtime runs in its own process (benchmarks/worker.py); rounds visit every (variant, threads) cell in an
order rotated each round (benchmarks/rounds.py), and every ratio carries an interval that resamples rounds.
Fidelity (window bootstrap) sits beside every speed figure. Writes benchmarks/results/<date>.{md,json,png}.
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
import peers  # noqa: E402
import prepare  # noqa: E402
import render  # noqa: E402
import rounds  # noqa: E402

PROMPT_TOKENS = 64
NEW_TOKENS = 64
FIDELITY_TOKENS = 4096  # 16 windows of 256 from independent documents
ENC_BATCH, ENC_LEN, ENC_BATCHES = 8, 128, 8
LLM_METHODS = ("int8-weight", "int8-dynamic", "int4-rtn", "int4-hqq", "int4-gptq")


def _variant(name: str, group: str, engine: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "group": group, "engine": engine, "status": "ok", "error": None, **kw}


def _build(v: dict[str, Any], fn: Any, *args: Any) -> None:
    """Fill v['model'] from a prepare builder; a failure marks the variant failed, never aborts the run."""
    t0 = time.perf_counter()
    try:
        built = Path(fn(*args))
        v["model"] = str(built if built.is_file() else prepare.model_file(built))
        v["disk_mb"] = round(peers.disk_mb(Path(v["model"])), 1)
        v["prepare_s"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # any builder failure is a reported result
        v["status"], v["error"] = "failed", f"prepare: {type(exc).__name__}: {str(exc)[:300]}"
    print(f"  prepared {v['name']}: {v['status']} {v.get('error') or ''}", flush=True)


def llm_variants(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Any]:
    import edgekit

    source = edgekit.load_source("example:smollm2-135m")
    torch = _variant(
        "PyTorch fp32 eager", "llm", "torch-gen", hf=str(source.path), method="fp32", baseline=True
    )
    torch["disk_mb"] = round(sum(p.stat().st_size for p in source.path.glob("*.safetensors")) / 2**20, 1)
    out = [torch]
    # edgekit's default decoder graph is the fused writer's; cache names carry the graph so they never mix.
    fp32 = _variant("edgekit fp32", "llm", "ort-gen", method="fp32")
    _build(fp32, prepare.edgekit_fp32, source, "smollm2-fused-fp32", "fused")
    out.append(fp32)
    rotated: dict[str, dict[str, Any]] = {"off": fp32}
    for method in args.methods:
        # Each method from the export `edgekit build --method` makes (int8-weight's is rotated): what users ship.
        mode = prepare.method_rotation(method)
        if mode not in rotated:
            rotated[mode] = _variant(f"edgekit fp32, rotation {mode}", "llm", "ort-gen", method="fp32")
            _build(rotated[mode], prepare.edgekit_fp32, source, f"smollm2-fused-fp32-rot-{mode}", "fused", mode)
        out.append(_compressed(f"edgekit {method}", rotated[mode], method, f"smollm2-fused-{method}"))
    if not args.skip_traced:
        # The same quantizer on optimum's traced graph: what the fused writer buys.
        traced = _variant("edgekit fp32, traced graph", "llm", "ort-gen", method="fp32")
        _build(traced, prepare.edgekit_fp32, source, "smollm2-traced-fp32", "optimum")
        out += [
            traced,
            _compressed("edgekit int4-rtn, traced graph", traced, "int4-rtn", "smollm2-traced-int4-rtn"),
        ]
    if not args.skip_genai:
        out += _genai_variants(source.path)
    if not args.skip_llama:
        for qtype in ("f32", *peers.GGUF_TYPES):
            v = _variant(f"llama.cpp {qtype}", "llm", "llama-gen", method=f"GGUF {qtype}", family="llama.cpp")
            _build(v, peers.gguf_quantized, source.path, qtype)
            out.append(v)
    if not args.skip_openvino:
        for fmt in peers.OV_FORMATS:
            v = _variant(f"OpenVINO {fmt}", "llm", "ov-gen", method=f"OpenVINO {fmt}", family="OpenVINO")
            _build(v, peers.openvino_model, source.path, fmt)
            out.append(v)
    return out, source


def _genai_variants(hf: Path) -> list[dict[str, Any]]:
    genai = _variant(
        f"ORT-GenAI {prepare.GENAI_VERSION} builder int4",
        "llm",
        "genai-gen",
        method="int4 (builder)",
        peer=True,
    )
    _build(genai, prepare.genai_int4, hf)
    if genai["status"] != "ok":
        return [genai]
    # The same graph through edgekit's runtime: separates the graph's speed from the runtime's.
    same = _variant(
        "builder int4 graph, edgekit runtime",
        "llm",
        "ort-gen",
        method="int4 (builder)",
        model=genai["model"],
        disk_mb=genai.get("disk_mb"),
    )
    return [genai, same]


def _compressed(name: str, fp32: dict[str, Any], method: str, cache_name: str) -> dict[str, Any]:
    v = _variant(name, "llm", "ort-gen", method=method)
    if fp32["status"] == "ok":
        _build(v, prepare.edgekit_compressed, Path(fp32["model"]).parent, method, cache_name)
    else:
        v["status"], v["error"] = "failed", "prepare: the fp32 export failed"
    return v


def enc_variants() -> tuple[list[dict[str, Any]], Any]:
    import edgekit
    from edgekit.bench.hostinfo import host_info

    source = edgekit.load_source("example:minilm-l6")
    out = [_variant("PyTorch fp32", "enc", "torch-enc", hf=str(source.path), method="fp32", baseline=True)]
    fp32 = _variant("edgekit fp32", "enc", "ort-enc", method="fp32")
    _build(fp32, prepare.edgekit_fp32, source, "minilm-fp32")
    isa = host_info()["isa_flags"]
    opt32, best = _optimum_best(source.path, prepare.optimum_preset(isa))
    target = prepare.host_target(isa)
    int8 = _variant(f"edgekit int8-dynamic ({target})", "enc", "ort-enc", method="int8-dynamic")
    if fp32["status"] == "ok":
        _build(
            int8,
            prepare.edgekit_compressed,
            Path(fp32["model"]).parent,
            "int8-dynamic",
            f"minilm-int8-dynamic-{target}",
            target,
        )
    else:
        int8["status"], int8["error"] = "failed", "prepare: the fp32 export failed"
    return [*out, fp32, opt32, best, int8], source


def _optimum_best(hf: Path, preset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """optimum-cli's export at the strongest `--optimize` level its quantizer accepts, and that export
    quantized with the host's ISA preset, per-channel; the levels that failed are noted on the row."""
    tried = []
    for level in prepare.OPTIMUM_LEVELS:
        opt32 = _variant(f"optimum-cli export --optimize {level}", "enc", "ort-enc", method="fp32")
        _build(opt32, prepare.optimum_fp32, hf, level)
        best = _variant(
            f"optimum-cli quantize --{preset} --per_channel (on {level})",
            "enc",
            "ort-enc",
            method=f"int8 (optimum {preset})",
            peer=True,
        )
        if opt32["status"] == "ok":
            _build(best, prepare.optimum_quantized, Path(opt32["model"]).parent, preset)
        else:
            best["status"], best["error"] = "failed", opt32["error"]
        if best["status"] == "ok":
            best["levels_refused"] = tried
            return opt32, best
        tried.append(f"{level}: {best['error']}")
    return opt32, best


def llm_inputs(source: Any) -> tuple[list[int], list[list[int]]]:
    """The prompt (the first 64 eval-text tokens) and the fidelity windows: 4,096 tokens in windows of 256 from
    independent held-out documents (edgekit.bench.fidelity.eval_windows, the same ones `edgekit bench` reads)."""
    from edgekit.bench.fidelity import eval_token_ids, eval_windows

    tok = source.load_tokenizer()
    prompt = eval_token_ids(tok, None, PROMPT_TOKENS)
    return prompt, [w for _, w in eval_windows(tok, source.config, None, FIDELITY_TOKENS)]


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


def cells(variants: list[dict[str, Any]], threads: list[int]) -> list[dict[str, Any]]:
    """One cell per (variant, thread count); a failed variant gives failed cells, reported, never timed."""
    return [{**v, "threads": t} for t in threads for v in variants]


def summarize(
    llm: list[dict[str, Any]],
    enc: list[dict[str, Any]],
    llm_config: dict[str, Any],
    bw: dict[str, Any],
    tmp: Path,
) -> None:
    """Medians, ratios (with round-bootstrap intervals) vs PyTorch and the peer at the same thread count,
    roofline fractions at 1 thread (the bandwidth is a 1-thread figure), MiniLM cosines."""
    import numpy as np

    kv = analysis.kv_bytes_per_position(llm_config)
    mean_past = PROMPT_TOKENS + NEW_TOKENS / 2
    fp32_model = next((v.get("model") for v in llm if v["method"] == "fp32" and v.get("model")), None)
    for v in llm:
        model = v.get("model") or fp32_model  # PyTorch reads the same fp32 weights
        if model and model.endswith(".onnx") and v["threads"] == 1:
            v["bytes"] = analysis.weight_bytes_per_token(Path(model))
            v["roofline_tps"] = analysis.roofline_tps(
                v["bytes"]["weight_bytes"], kv, mean_past, bw["memory_bandwidth_gbps"]
            )
        if v.get("decode_tps"):
            v["decode_tps_median"] = statistics.median(v["decode_tps"])
            v["ttft_ms_median"] = statistics.median(v["ttft_s"]) * 1e3
            if v.get("roofline_tps"):
                v["roofline_fraction"] = v["decode_tps_median"] / v["roofline_tps"]
    rounds.ratios(llm, "decode_tps", "ttft_s")
    rounds.genai_fidelity(llm)
    ref_file = tmp / "enc-PyTorch fp32.npy"
    ref = np.load(ref_file) if ref_file.is_file() else None
    for v in enc:
        if v.get("latency_s"):
            v["latency_ms_median"] = statistics.median(v["latency_s"]) * 1e3
        emb_file = tmp / f"enc-{v['name']}.npy"
        if ref is not None and emb_file.is_file() and v.get("latency_s"):
            v["cosine"] = analysis.cosine(ref, np.load(emb_file))
    rounds.ratios(enc, None, "latency_s")


def profile_llm(llm: list[dict[str, Any]]) -> None:
    """onnxruntime's profiler over 16 decode steps of each ONNX variant (benchmarks/profile_decode.py), 1 thread."""
    for v in llm:
        if v["status"] != "ok" or v["engine"] != "ort-gen" or v["threads"] != 1:
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
    p.add_argument("--quick", action="store_true", help="2 rounds × 2 runs, results to <date>-quick.md")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    p.add_argument("--runs", type=int, default=None, help="timed generations per process (default 2)")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument(
        "--methods", default=",".join(LLM_METHODS), help="edgekit methods for SmolLM2, comma-separated"
    )
    p.add_argument("--skip-genai", action="store_true", help="leave out the onnxruntime-genai builder")
    p.add_argument(
        "--skip-llama", action="store_true", help="leave out llama.cpp (its first build takes ~20 min)"
    )
    p.add_argument("--skip-openvino", action="store_true", help="leave out OpenVINO")
    p.add_argument("--skip-llm", action="store_true")
    p.add_argument(
        "--skip-traced", action="store_true", help="leave out the optimum-traced graph reference rows"
    )
    p.add_argument(
        "--no-profile", action="store_true", help="skip the per-op decode profile of each ONNX variant"
    )
    p.add_argument("--skip-enc", action="store_true")
    p.add_argument("--skip-build-rss", action="store_true", help="leave out the `edgekit build` peak-RSS run")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--suffix", default=None, help="results file name suffix (default: -quick for --quick)")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.runs = args.runs or 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.perf_counter()
    print("preparing models (cached under", prepare.cache_root(), ")", flush=True)
    llm_v, llm_source = llm_variants(args) if not args.skip_llm else ([], None)
    enc_v, enc_source = enc_variants() if not args.skip_enc else ([], None)
    build_mem = None if args.skip_build_rss or args.skip_llm else prepare.build_memory()
    prepared_s = round(time.perf_counter() - t0, 1)
    bw_before = analysis.measure_bandwidth()
    with tempfile.TemporaryDirectory(prefix="edgekit-benchmarks-") as tmp_name:
        tmp = Path(tmp_name)
        llm, enc, records = measure_all(llm_v, llm_source, enc_v, enc_source, args, tmp)
        bw_after = analysis.measure_bandwidth()
        # The higher of two measurements: a busy moment lowers bandwidth, and a higher roof is the stricter one.
        bw = max(bw_before, bw_after, key=lambda b: b["memory_bandwidth_gbps"])
        summarize(llm, enc, llm_source.config if llm_source else {}, bw, tmp)
        if not args.no_profile:
            profile_llm(llm)
    machine = analysis.machine(prepare.genai_venv() / "bin" / "python")
    machine["versions"].update(peers.peer_versions())
    results = {
        "schema": "edgekit/benchmarks@2",
        "started": started,
        "wall_s": round(time.perf_counter() - t0, 1),
        "prepare_s": prepared_s,
        # "full" only for the defaults `make bench` runs; any option makes it a custom run (the command says which).
        "mode": "quick" if args.quick else ("custom" if (sys.argv[1:] if argv is None else argv) else "full"),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "threads": args.threads,
            "rounds": args.rounds,
            "runs_per_round": args.runs,
            "fidelity_tokens": FIDELITY_TOKENS,
            "encoder_batch": [ENC_BATCH, ENC_LEN],
        },
        "machine": machine,
        "bandwidth": {"before": bw_before, "after": bw_after, "used": bw},
        "rounds": records,
        "build_memory": build_mem,
        "llm": [{k: val for k, val in v.items() if not k.startswith("_")} for v in llm],
        "encoder": [{k: val for k, val in v.items() if not k.startswith("_")} for v in enc],
    }
    suffix = args.suffix if args.suffix is not None else ("-quick" if args.quick else "")
    paths = render.write(results, args.out, suffix=suffix)
    print(paths["md"].read_text())
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


def measure_all(
    llm_v: list[dict[str, Any]],
    llm_source: Any,
    enc_v: list[dict[str, Any]],
    enc_source: Any,
    args: argparse.Namespace,
    tmp: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Fidelity once per model (1 thread, untimed), then the timing rounds: LLM cells, then encoder cells."""
    llm: list[dict[str, Any]] = []
    enc: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    if llm_v:
        prompt, wins = llm_inputs(llm_source)
        spec = {"prompt": prompt, "new_tokens": NEW_TOKENS, "runs": args.runs, "windows": wins}
        rounds.fidelity_pass(llm_v, spec, tmp, args.timeout)
        llm = cells(llm_v, args.threads)
        records += [{**r, "group": "llm"} for r in rounds.timing_rounds(llm, spec, args, tmp)]
    if enc_v:
        spec = {"batches": str(enc_inputs(enc_source, tmp)), "runs": max(10, args.runs * 4)}
        for v in enc_v:
            v["_spec_extra"] = {"embeddings_out": str(tmp / f"enc-{v['name']}.npy")}
        enc = cells(enc_v, args.threads)
        records += [{**r, "group": "enc"} for r in rounds.timing_rounds(enc, spec, args, tmp)]
    return llm, enc, records


if __name__ == "__main__":
    raise SystemExit(main())

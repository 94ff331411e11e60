"""benchmarks/results/<date>.{json,md,png} from run.py's results dict."""

from __future__ import annotations

import io
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import targets


def _f(x: Any, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def _x(x: Any) -> str:
    """A ratio: a bare float, or analysis.ratio_ci's dict shown with its interval."""
    if x is None:
        return "–"
    if isinstance(x, dict):
        return f"{x['value']:.2f}× [{x['ci95_low']:.2f}, {x['ci95_high']:.2f}]"
    return f"{x:.2f}×"


def _v(x: Any) -> float | None:
    return x["value"] if isinstance(x, dict) else x


def _fid(v: dict[str, Any], name: str, fmt: str) -> str:
    m = (v.get("fidelity") or {}).get(name)
    if not m:
        return "–"
    return f"{format(m['value'], fmt)} [{format(m['ci95_low'], fmt)}, {format(m['ci95_high'], fmt)}]"


def _failed(v: dict[str, Any], cols: int) -> str:
    return f"| {v['name']} | FAILED: {str(v.get('error'))[:160].replace('|', '/')} |" + " |" * (cols - 2)


def llm_table(llm: list[dict[str, Any]], threads: int) -> list[str]:
    rows = [
        "| variant | decode tok/s | vs PyTorch [95% CI] | vs builder int4 | TTFT ms | TTFT speedup vs PyTorch | "
        "top-1 vs fp32 [95% CI] | KLD mean [95% CI] | PPL ratio | MiB on disk | roofline tok/s | "
        "% of roofline | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in (v for v in llm if v["threads"] == threads):
        if v["status"] != "ok" or not v.get("decode_tps_median"):
            rows.append(_failed(v, 13))
            continue
        top1 = "1 (reference)" if v.get("baseline") else _fid(v, "top1_agreement", ".3f")
        rows.append(
            f"| {v['name']} | {v['decode_tps_median']:.1f} | {_x(v.get('vs_baseline_decode_tps'))} | "
            f"{_x(v.get('vs_peer_decode_tps'))} | {v['ttft_ms_median']:.0f} | "
            f"{_x(v.get('vs_baseline_ttft_s'))} | {top1} | {_fid(v, 'kld_mean', '.2g')} | "
            f"{_fid(v, 'ppl_ratio', '.3f')} | {_f(v.get('disk_mb'), '.0f')} | "
            f"{_f(v.get('roofline_tps'), '.0f')} | {_f(100 * v['roofline_fraction'] if v.get('roofline_fraction') else None, '.0f')} | "
            f"{_f(v.get('peak_rss_mb'), '.0f')} |"
        )
    return rows


def _genai_note(llm: list[dict[str, Any]]) -> list[str]:
    g = next((v for v in llm if v.get("fidelity_via")), None)
    if g is None:
        return []
    same = g.get("same_greedy_tokens_as_plain_ort")
    extra = "" if same is None else f"; its 64 greedy tokens {'match' if same else 'differ from'} that run's"
    return [f"The builder row's fidelity is {g['fidelity_via']}{extra}.", ""]


def _peer_notes(llm: list[dict[str, Any]]) -> list[str]:
    notes = [
        "- **int4 on this source says more about the grid than the method**: SmolLM2's example weights are a "
        "dequantized Q4_1 GGUF, so every asymmetric block-32 4-bit method (llama.cpp Q4_1, edgekit int4-hqq) "
        "can land back on their grid and look near lossless; Q4_0, Q4_K_M, RTN and OpenVINO int4 (group 64) do not.",
        "- llama.cpp rows: llama-cpp-python's `Llama.generate` (greedy), GGUFs quantized with "
        "`llama_model_quantize` from one f32 GGUF converted (`convert_hf_to_gguf.py`) from the same fp32 folder; "
        "fidelity from `logits_all=True` on the same windows. Q8_0 also quantizes activations per 32-block.",
    ]
    ov = next((v for v in llm if v.get("family") == "OpenVINO" and v.get("runtime_info")), None)
    if ov:
        info = ", ".join(f"{k} {_ov_value(val)}" for k, val in ov["runtime_info"].items())
        notes.append(
            "- OpenVINO rows: optimum-intel's `OVModelForCausalLM.generate` with OpenVINO's defaults on this CPU "
            f"({info}): 'fp32' is the weight format, not the compute precision."
        )
    per_name: dict[str, float] = {}
    for v in llm:
        mib = (v.get("runtime_info") or {}).get("huge_pages_mib") if v.get("engine") == "ort-gen" else None
        if mib is not None:
            per_name[v["name"]] = max(per_name.get(v["name"], 0.0), float(mib))
    huge = sorted(per_name.items())
    if huge:
        notes.append(
            "- edgekit rows (edgekit.runtime): session memory backed by transparent huge pages after load "
            "(edgekit.runtime.hugepages; MiB in huge pages at the end of a timing worker, the larger of 1 and 2 threads: "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in huge) + "). The peers run with their own defaults "
            "(4 KiB pages here: THP is in `madvise` mode and none of them asks)."
        )
    return [*notes, ""]


def _ov_value(x: str) -> str:
    return x.split("'")[1] if x.count("'") >= 2 else x


def enc_table(enc: list[dict[str, Any]], threads: int) -> list[str]:
    peer = next((v["name"] for v in enc if v.get("peer")), "optimum-cli")
    rows = [
        f"| variant | latency ms / batch | speedup vs PyTorch [95% CI] | vs {peer} | cosine vs PyTorch (mean) | "
        "cosine min | MiB on disk | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in (v for v in enc if v["threads"] == threads):
        if v["status"] != "ok" or not v.get("latency_ms_median"):
            rows.append(_failed(v, 8))
            continue
        cos = v.get("cosine") or {}
        mean = "1 (reference)" if v.get("baseline") else _f(cos.get("cosine_mean"), ".4f")
        rows.append(
            f"| {v['name']} | {v['latency_ms_median']:.1f} | {_x(v.get('vs_baseline_latency_s'))} | "
            f"{_x(v.get('vs_peer_latency_s'))} | {mean} | {_f(cos.get('cosine_min'), '.4f')} | "
            f"{_f(v.get('disk_mb'), '.0f')} | {_f(v.get('peak_rss_mb'), '.0f')} |"
        )
    return rows


def rounds_table(r: dict[str, Any]) -> list[str]:
    rows = [
        "| group | round | started (UTC) | wall s | load avg 1/5/15 at start | at end | ISA flags | first in order |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in r.get("rounds", []):
        rows.append(
            f"| {rec['group']} | {rec['round']} | {rec['started']} | {rec['wall_s']:.0f} | "
            f"{' / '.join(map(str, rec['load_average']))} | {' / '.join(map(str, rec['load_average_end']))} | "
            f"{' '.join(rec['isa_flags'])} | {rec['order'][0] if rec['order'] else '–'} |"
        )
    return rows


def profile_table(llm: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| variant | ms/step (profiled) | nodes/step | kernels ms | outside kernels ms | MatMul* ms | "
        "attention ms | top other ops (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in llm:
        p = v.get("profile")
        if not p or "error" in p:
            continue
        ops = p["top_ops_ms_per_step"]
        mm = sum(
            t
            for k, t in ops.items()
            if k.startswith(("MatMul", "FusedMatMul", "DynamicQuantizeMatMul", "Gemm"))
        )
        att = sum(t for k, t in ops.items() if "Attention" in k or k == "Softmax")
        other = ", ".join(
            f"{k} {t:.2f}"
            for k, t in ops.items()
            if not k.startswith(("MatMul", "FusedMatMul", "DynamicQuantizeMatMul", "Gemm"))
            and "Attention" not in k
        )[:120]
        rows.append(
            f"| {v['name']} | {p['model_run_ms']:.1f} | {p['nodes_per_step']} | {p['kernel_ms']:.1f} | "
            f"{p['outside_kernels_ms']:.1f} | {mm:.1f} | {att:.2f} | {other} |"
        )
    return rows if len(rows) > 2 else []


def _top1(v: dict[str, Any]) -> float | None:
    m = (v.get("fidelity") or {}).get("top1_agreement")
    return None if m is None else float(m["value"])


def _low(x: Any) -> float:
    return float(x["ci95_low"] if isinstance(x, dict) else x)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def _best(llm: list[dict[str, Any]], prefix: str, top1_min: float) -> dict[str, Any] | None:
    ok = [v for v in llm if str(v["method"]).startswith(prefix) and (_top1(v) or 0) >= top1_min]
    return max(ok, key=lambda v: v["decode_tps_median"]) if ok else None


def targets_table(r: dict[str, Any]) -> list[str]:
    """The issue's targets, each against the fastest edgekit variant of this run (1 thread) that meets its
    fidelity bar; a ratio meets its bar only when its whole interval does."""
    llm = [
        v
        for v in r["llm"]
        if v.get("decode_tps_median") and v["name"].startswith("edgekit ") and v["threads"] == 1
    ]
    rows = ["| target | best qualifying edgekit variant | value | verdict |", "|---|---|---|---|"]
    for prefix, top1_min, goal in (("int4", 0.95, 8.0), ("int8", 0.98, 4.0)):
        v = _best(llm, prefix, top1_min)
        name = v["name"] if v else "none reaches the fidelity bar"
        checks = [(f"decode ≥ {goal:g}× PyTorch", v.get("vs_baseline_decode_tps") if v else None, goal, _x)]
        if prefix == "int4":
            checks += [
                ("decode ≥ 1.0× builder int4", v.get("vs_peer_decode_tps") if v else None, 1.0, _x),
                (
                    "≥ 60 % of its roofline",
                    v.get("roofline_fraction") if v else None,
                    0.6,
                    lambda x: _f(100 * x if x is not None else None, ".0f") + " %",
                ),
            ]
        for what, val, bar, fmt in checks:
            rows.append(
                f"| SmolLM2 {prefix} {what} at top-1 ≥ {top1_min} | {name} | {fmt(val)} | "
                f"{'NOT met' if v is None else _verdict(None if val is None else _low(val) >= bar)} |"
            )
    enc = next(
        (
            v
            for v in r["encoder"]
            if v["name"].startswith("edgekit int8-dynamic") and v.get("latency_ms_median") and v["threads"] == 1
        ),
        None,
    )
    cos = (enc.get("cosine") or {}).get("cosine_mean") if enc else None
    peer = next((v["name"] for v in r["encoder"] if v.get("peer")), "optimum-cli")
    for key, goal, what in (("vs_baseline", 2.5, "PyTorch"), ("vs_peer", 1.0, peer)):
        val = enc.get(f"{key}_latency_s") if enc else None
        ok = None if val is None or cos is None else (_low(val) >= goal and cos >= 0.99)
        rows.append(
            f"| MiniLM int8 ≥ {goal:g}× {what} at cosine ≥ 0.99 | edgekit int8-dynamic (cosine "
            f"{_f(cos, '.4f')}) | {_x(val)} | {_verdict(ok)} |"
        )
    return rows


def _profile_section(llm: list[dict[str, Any]]) -> list[str]:
    rows = profile_table(llm)
    if not rows:
        return []
    head = "### What a decode step spends its time on (onnxruntime profiler, 16 steps, 1 thread)"
    return [
        head,
        "",
        "Profiling inflates every node a little; read the split, not the absolute times.",
        "",
        *rows,
        "",
    ]


def machine_lines(r: dict[str, Any]) -> list[str]:
    m, bw = r["machine"], r["bandwidth"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return [
        f"- CPU: {m['cpu_model']}, {m['cores']} cores visible, ISA: {' '.join(m['isa_flags'])}; "
        f"{m['memory_mb'] / 1024:.0f} GiB RAM; {m['os']}; Python {m['python']}",
        f"- versions: {versions}",
        f"- memory read bandwidth, 1 thread (torch sum of 512 MiB, best of 5): before {bw['before']['memory_bandwidth_gbps']} GB/s, "
        f"after {bw['after']['memory_bandwidth_gbps']} GB/s; the roofline uses the higher, {bw['used']['memory_bandwidth_gbps']} GB/s",
        f"- load average at the end: {' / '.join(str(x) for x in m['load_average'])} (1/5/15 min; a shared host "
        "inflates absolute times, the ratios come from the same rounds)",
    ]


def compare_table(r: dict[str, Any]) -> list[str]:
    """The README's 'How we compare': every SmolLM2 row at 1 thread, compact."""
    rows = [
        "| variant | decode tok/s (× PyTorch [95% CI]) | TTFT ms | top-1 [95% CI] | KLD | MiB |",
        "|---|---|---|---|---|---|",
    ]
    for v in r["llm"]:
        if v["threads"] != 1 or not v.get("decode_tps_median"):
            continue
        top1 = "ref" if v.get("baseline") else _fid(v, "top1_agreement", ".3f")
        kld = (
            "ref"
            if v.get("baseline")
            else _f((v.get("fidelity") or {}).get("kld_mean", {}).get("value"), ".2g")
        )
        rows.append(
            f"| {v['name']} | {v['decode_tps_median']:.1f} ({_x(v.get('vs_baseline_decode_tps'))}) | "
            f"{v['ttft_ms_median']:.0f} | {top1} | {kld} | {_f(v.get('disk_mb'), '.0f')} |"
        )
    return rows


def _llm_sections(r: dict[str, Any]) -> list[str]:
    out = []
    for t in r["settings"]["threads"]:
        out += [f"### {t} thread{'s' if t > 1 else ''}", "", *llm_table(r["llm"], t), ""]
    return out


def _enc_sections(r: dict[str, Any]) -> list[str]:
    peer = next((v for v in r["encoder"] if v.get("levels_refused")), None)
    out = (
        [f"Stronger optimize levels the quantizer refused: {'; '.join(peer['levels_refused'])[:400]}", ""]
        if peer
        else []
    )
    for t in r["settings"]["threads"]:
        out += [f"### {t} thread{'s' if t > 1 else ''}", "", *enc_table(r["encoder"], t), ""]
    return out


def markdown(r: dict[str, Any], png: str) -> str:
    s = r["settings"]
    n = s["rounds"] * s["runs_per_round"]
    lines = [
        f"# edgekit benchmarks, {r['started'][:10]} ({r['mode']} run)",
        "",
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s wall, of which preparing models {r.get('prepare_s', 0):.0f} s). "
        f"Started {r['started']}.",
        "",
        "## Machine",
        "",
        *machine_lines(r),
        "",
        "## SmolLM2-135M: decode and TTFT",
        "",
        f"{s['prompt_tokens']}-token prompt (the same token ids for every engine), {s['new_tokens']} new tokens, greedy, "
        f"each engine in its own runtime loop and process. {s['rounds']} interleaved rounds, each visiting every "
        f"(variant, threads) cell once in an order rotated by (cells / rounds) per round, {s['runs_per_round']} timed runs per "
        f"visit after a warm-up: {n} samples per cell, medians shown. Ratios are against PyTorch at the same thread "
        "count, with 95 % intervals that resample whole rounds. Fidelity vs PyTorch fp32 on "
        f"{s['fidelity_tokens']} held-out tokens (windows of 256 from independent documents, "
        "edgekit.bench.fidelity.eval_windows), 95 % intervals that resample whole windows. Roofline (1 thread, ONNX "
        "graphs only) = bandwidth / (weights read per token + fp32 KV cache at the mean decode position). Peak RSS: "
        "the timing worker's high-water mark.",
        "",
        *_llm_sections(r),
        *_peer_notes(r["llm"]),
        *_genai_note(r["llm"]),
        *_profile_section(r["llm"]),
        *([str(r["notes"]), ""] if r.get("notes") else []),
        f"## MiniLM-L6: one {s['encoder_batch'][0]}×{s['encoder_batch'][1]} batch",
        "",
        "Latency per batch, median over the rounds' runs; cosine of mean-pooled normalized embeddings vs PyTorch "
        "fp32 over 64 eval sentences. The optimum-cli row is its strongest preset for this host: the export at "
        "its highest CPU `--optimize` level, then `onnxruntime quantize` with the host's ISA preset, per-channel.",
        "",
        *_enc_sections(r),
        "## How we compare (SmolLM2, 1 thread; the README's table)",
        "",
        *compare_table(r),
        "",
        "## Targets (issue 9)",
        "",
        *targets_table(r),
        "",
        *targets.issue20_section(r),
        "## Rounds: host load and ISA",
        "",
        *rounds_table(r),
        "",
        f"![decode tok/s and encoder latency]({png})",
        "",
    ]
    return "\n".join(lines)


def chart(r: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    llm = [v for v in r["llm"] if v.get("decode_tps_median") and v["threads"] == 1]
    xs = range(len(llm))
    left.bar(xs, [v["decode_tps_median"] for v in llm], color="tab:blue", label="measured")
    left.scatter(
        xs, [v.get("roofline_tps") or 0 for v in llm], marker="_", s=600, color="tab:red", label="roofline"
    )
    for i, v in enumerate(llm):
        top1 = (v.get("fidelity") or {}).get("top1_agreement", {}).get("value")
        label = "ref" if v.get("baseline") else (f"top-1 {top1:.2f}" if top1 is not None else "")
        left.text(i, v["decode_tps_median"], label, ha="center", va="bottom", fontsize=8)
    left.set_xticks(list(xs), [textwrap.fill(v["name"], 14) for v in llm], fontsize=7)
    left.set_ylabel("decode tokens/s (1 thread)")
    left.set_title("SmolLM2-135M decode (label: top-1 vs fp32)")
    left.legend()
    enc = [v for v in r["encoder"] if v.get("latency_ms_median") and v["threads"] == 1]
    right.bar(range(len(enc)), [v["latency_ms_median"] for v in enc], color="tab:green")
    for i, v in enumerate(enc):
        cos = (v.get("cosine") or {}).get("cosine_mean")
        right.text(
            i,
            v["latency_ms_median"],
            "ref" if v.get("baseline") else f"cos {cos:.3f}" if cos else "",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    right.set_xticks(range(len(enc)), [textwrap.fill(v["name"], 14) for v in enc], fontsize=7)
    right.set_ylabel("ms per 8×128 batch (lower is better)")
    right.set_title("MiniLM-L6 latency (label: cosine vs PyTorch)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write(r: dict[str, Any], out: Path, *, suffix: str = "") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y-%m-%d", time.gmtime()) + suffix
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    for key, data in (
        ("png", chart(r)),
        ("md", markdown(r, paths["png"].name).encode()),
        ("json", (json.dumps(r, indent=1, default=str) + "\n").encode()),
    ):
        tmp = paths[key].with_suffix(paths[key].suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(paths[key])
    return paths

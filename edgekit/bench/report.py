"""Render a report: report.json (canonical), report.md (tables for a PR), report.png (matplotlib Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import InputError
from edgekit.util import write_atomic

PERF_ORDER = ("decode_tokens_per_s", "ttft_ms", "prefill_tokens_per_s", "per_token_ms", "latency_ms",
              "throughput_items_per_s", "peak_rss_mb", "model_size_mb", "load_ms")
FIDELITY_ORDER = ("top1_agreement", "kld_mean", "kld_p99", "kld_max", "ppl_source", "ppl_variant", "ppl_ratio",
                  "agreement", "accuracy", "accuracy_source", "accuracy_ratio", "cosine_mean", "cosine_p5")
DECODE_ORDER = ("match_fraction", "matched_tokens_mean", "full_match_rate", "kld_mean", "top1_agreement")


def write_report(report: dict[str, Any], folder: Path | str, *, stem: str = "report") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `folder`; returns their paths."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the report to {folder}: {exc.strerror}") from exc
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
    write_atomic(paths["png"], render_png(report))
    write_atomic(paths["md"], to_markdown(report, png_name=paths["png"].name).encode())
    write_atomic(paths["json"], (json.dumps(report, indent=2, default=str) + "\n").encode())
    return paths


def _num(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _perf_rows(perf: dict[str, Any]) -> list[str]:
    var, src, dev = perf.get("variant") or {}, perf.get("source") or {}, perf.get("device") or {}
    rows = ["| metric | variant p50 | variant p95 | source p50 | speedup | device (est.) |", "|---|---|---|---|---|---|"]
    for name in PERF_ORDER:
        if name not in var:
            continue
        v, s = var[name], src.get(name, {})
        d = dev.get(name)
        capped = ", at the device roofline" if d and d.get("capped_at_device_roofline") else ""
        band = (d.get("range") or {}).get("value") if d else None
        span = f" [{_num(band[0])}, {_num(band[1])}]" if band else ""
        est = f"{_num(d['value'])}{span} (estimated{capped})" if d else "–"
        rows.append(f"| {name} ({v['unit']}) | {_num(v['value'])} | {_num(v.get('p95'))} | {_num(s.get('value'))} | "
                    f"{_num((perf.get('speedup') or {}).get(name))}× | {est} |")
    return rows


def _runs_line(perf: dict[str, Any]) -> str:
    runs = perf.get("runs") or {}
    parts = [f"{who}: {r['runs']} runs ({r['stopped']}), {r['threads']} thread(s)" for who, r in runs.items()]
    mode = "interleaved run by run, each engine in its own process" if all(r.get("interleaved") for r in runs.values()) else ""
    return f"Timing: {'; '.join(parts)}{'; ' + mode if mode else ''}; p50 is the value."


def _fidelity_rows(fid: dict[str, Any], order: tuple[str, ...] | None = None) -> list[str]:
    rows = ["| metric | value | 95 % CI | n | windows |", "|---|---|---|---|---|"]
    for name in order or FIDELITY_ORDER:
        m = fid.get(name)
        if m:
            rows.append(f"| {name} | {_num(m['value'])} | [{_num(m['ci95_low'])}, {_num(m['ci95_high'])}] | {m['n']} "
                        f"| {m.get('n_windows', m['n'])} |")
    return rows


def to_markdown(report: dict[str, Any], *, png_name: str | None = None) -> str:
    host, var, src, prof = report["host"], report["variant"], report["source"], report["profile"]
    perf = report["performance"]
    lines = [
        f"# edgekit bench: {var['method']} vs {src['spec']}",
        "",
        f"- variant: `{var['path']}` ({var['method']}, target {var['target']}, {var['size_mb']:.1f} MB, ran on {var['provider']})",
        f"- source: `{src['path']}` ({src['architecture']}, {src['parameters']:,} parameters, sha256 {src['sha256'][:12]}…)",
        f"- profile: {prof['name']} (workload {prof['workload']})",
        f"- host: {host['cpu_model']}, {host['cores']} cores, {' '.join(host['isa_flags'])}; "
        f"onnxruntime {host['onnxruntime_version']}",
        f"- created {report['created']} by edgekit {report['edgekit_version']}",
        "",
        "## Performance",
        "",
        *_perf_rows(perf),
        "",
        _runs_line(perf),
        "",
    ]
    if perf.get("device"):
        lines += ["Device figures are roofline estimates scaled from this host's measurement (`estimated: true`); "
                  "[low, high] is the range from the device's efficiency band in the profile.", ""]
    elif perf.get("on_device"):
        lines += ["Measured on the device itself (`--on-device`).", ""]
    lines += ["## Fidelity vs source (same tokens; 95 % bootstrap CI resampling whole windows)", "", *_fidelity_rows(report["fidelity"]), ""]
    decode = report.get("decode")
    if decode:
        lines += [f"## Decode path ({decode['prompts']} prompts × {decode['new_tokens']} greedy tokens, {decode['path']}; "
                  "95 % CI resampling whole prompts)", "", *_fidelity_rows(decode["metrics"], DECODE_ORDER), ""]
    if report.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in report["warnings"]], ""]
    if png_name:
        lines += [f"![latency and fidelity]({png_name})", ""]
    return "\n".join(lines)


def _fidelity_point(fid: dict[str, Any]) -> tuple[str, float] | None:
    for name in ("top1_agreement", "cosine_mean", "agreement"):
        if name in fid:
            return name, float(fid[name]["value"])
    return None


def render_png(report: dict[str, Any]) -> bytes:
    """Latency distribution (variant vs source) and size vs fidelity, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    perf = report["performance"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    metric = "per_token_ms" if "per_token_ms" in perf["variant"] else "latency_ms"
    for who, color in (("variant", "tab:blue"), ("source", "tab:orange")):
        samples = (perf.get(who) or {}).get(metric, {}).get("samples") or []
        if samples:
            left.hist(samples, bins=30, alpha=0.6, color=color, label=f"{who} (p50 {perf[who][metric]['value']:.3g} ms)")
    left.set_xlabel(f"{metric.replace('_', ' ')}")
    left.set_ylabel("count")
    left.set_title("latency distribution")
    left.legend()
    point = _fidelity_point(report["fidelity"])
    if point:
        name, value = point
        right.scatter([report["source"]["size_mb"]], [1.0], color="tab:orange", label="source (reference)", s=60)
        right.scatter([report["variant"]["size_mb"]], [value], color="tab:blue", label=report["variant"]["method"], s=60)
        ci = report["fidelity"][name]
        right.errorbar([report["variant"]["size_mb"]], [value], yerr=[[value - ci["ci95_low"]], [ci["ci95_high"] - value]],
                       color="tab:blue", capsize=4)
        right.set_ylabel(name.replace("_", " "))
    right.set_xlabel("model size (MB)")
    right.set_title("size vs fidelity")
    right.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

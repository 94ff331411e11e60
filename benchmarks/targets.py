"""Issue 20's targets table: edgekit against what an edge user would pick instead, from one `make bench` run.

Every speed figure is a ratio of two cells of the same interleaved rounds (analysis.ratio_ci pairs them by round),
taken at equal or better fidelity: an edgekit variant qualifies against a peer only when its KLD mean (same eval
windows) is at most the peer's. A ratio meets its bar only when its whole 95 % interval does; the point value is
shown beside it. Sizes and the build's peak RSS are single measurements, so they have no interval.
"""

from __future__ import annotations

from typing import Any

import analysis

Cell = dict[str, Any]
HEAD = [
    "| target | edgekit variant (KLD) | reference (KLD) | value [95% CI] | verdict |",
    "|---|---|---|---|---|",
]
# The peers each row compares against, by the names run.py gives their cells.
Q8_0, Q4_0 = "llama.cpp Q8_0", "llama.cpp Q4_0"
OV_DEFAULT, OV_INT8, OV_INT4 = "OpenVINO fp32", "OpenVINO int8", "OpenVINO int4"


def kld(v: Cell | None) -> float | None:
    m = ((v or {}).get("fidelity") or {}).get("kld_mean")
    return None if m is None else float(m["value"])


def _k(v: Cell | None) -> str:
    if v is None:
        return "n/a"
    k = kld(v)
    return f"{v['name']} ({'KLD n/a' if k is None else format(k, '.2g')})"


def _x(x: dict[str, Any] | float | None) -> str:
    if x is None:
        return "–"
    if isinstance(x, dict):
        return f"{x['value']:.2f}× [{x['ci95_low']:.2f}, {x['ci95_high']:.2f}]"
    return f"{x:.2f}×"


def verdict(x: dict[str, Any] | float | None, bar: float, *, at_most: bool = False) -> str:
    """'met' only when the whole interval is on the right side of the bar (a bare float is its own interval)."""
    if x is None:
        return "n/a"
    edge = float(x["ci95_high"] if at_most else x["ci95_low"]) if isinstance(x, dict) else float(x)
    return "met" if (edge <= bar if at_most else edge >= bar) else "NOT met"


def _timed(llm: list[Cell]) -> list[Cell]:
    return [v for v in llm if v.get("status") == "ok" and v.get("decode_tps") and v.get("sample_round")]


def cell(llm: list[Cell], name: str, threads: int) -> Cell | None:
    return next((v for v in _timed(llm) if v["name"] == name and v["threads"] == threads), None)


def edgekit_cells(llm: list[Cell], threads: int, prefix: str = "") -> list[Cell]:
    return [
        v
        for v in _timed(llm)
        if v["name"].startswith("edgekit ")
        and v["threads"] == threads
        and str(v["method"]).startswith(prefix)
    ]


def qualifying(cands: list[Cell], ref: Cell | None) -> list[Cell]:
    """The candidates at equal or better fidelity than ref (KLD mean ≤ ref's); none when either KLD is unknown."""
    ref_kld = kld(ref)
    if ref_kld is None:
        return []
    return [v for v in cands if (k := kld(v)) is not None and k <= ref_kld]


def fastest(cands: list[Cell]) -> Cell | None:
    return max(cands, key=lambda v: v["decode_tps_median"]) if cands else None


def quickest_ttft(cands: list[Cell]) -> Cell | None:
    return min(cands, key=lambda v: v["ttft_ms_median"]) if cands else None


def decode_ratio(num: Cell, den: Cell) -> dict[str, Any] | None:
    """num's decode tok/s over den's, paired by round (> 1: num faster)."""
    return analysis.ratio_ci(num["decode_tps"], num["sample_round"], den["decode_tps"], den["sample_round"])


def ttft_ratio(edgekit: Cell, ref: Cell) -> dict[str, Any] | None:
    """ref's TTFT over edgekit's, paired by round (> 1: edgekit answers first)."""
    return analysis.ratio_ci(ref["ttft_s"], ref["sample_round"], edgekit["ttft_s"], edgekit["sample_round"])


def _row(target: str, mine: str, ref: str, value: str, verdict_: str) -> str:
    return f"| {target} | {mine} | {ref} | {value} | {verdict_} |"


def decode_rows(llm: list[Cell], bits: str, peer: str, threads: list[int]) -> list[str]:
    """The fastest edgekit `bits` variant at KLD ≤ the peer's, per thread count; with none, the fastest
    non-qualifying one is named for context and the row is not met."""
    rows = []
    for t in threads:
        target = f"{bits} decode ≥ 1.0× {peer}, {t} thread{'s' if t > 1 else ''}"
        ref = cell(llm, peer, t)
        cands = edgekit_cells(llm, t, bits)
        best = fastest(qualifying(cands, ref))
        if ref is None or kld(ref) is None:
            rows.append(_row(target, _k(fastest(cands)), _k(ref), "–", "n/a"))
        elif best is None:
            other = fastest(cands)
            seen = f"; fastest {bits}: {_k(other)} at {_x(decode_ratio(other, ref))}" if other else ""
            rows.append(_row(target, f"none at KLD ≤ {kld(ref):.2g}{seen}", _k(ref), "–", "NOT met"))
        else:
            ratio = decode_ratio(best, ref)
            rows.append(_row(target, _k(best), _k(ref), _x(ratio), verdict(ratio, 1.0)))
    return rows


def ttft_rows(llm: list[Cell], threads: list[int]) -> list[str]:
    """Per OpenVINO reference (its default export, then int8): the quickest edgekit variant at KLD ≤ its KLD,
    and, where another edgekit variant is quicker at a worse KLD, that one too (the fidelity trade)."""
    rows = []
    for t in threads:
        cands = edgekit_cells(llm, t)
        for name, label in ((OV_DEFAULT, "OpenVINO default (fp32 weights)"), (OV_INT8, OV_INT8)):
            ref = cell(llm, name, t)
            target = f"TTFT ≥ 1.0× {label}, {t} thread{'s' if t > 1 else ''}"
            if ref is None or kld(ref) is None:
                rows.append(_row(target, _k(quickest_ttft(cands)), _k(ref), "–", "n/a"))
                continue
            best = quickest_ttft(qualifying(cands, ref))
            if best is None:
                rows.append(_row(target, f"none at KLD ≤ {kld(ref):.2g}", _k(ref), "–", "NOT met"))
            else:
                ratio = ttft_ratio(best, ref)
                rows.append(_row(target, _k(best), _k(ref), _x(ratio), verdict(ratio, 1.0)))
            quickest = quickest_ttft(cands)
            if quickest is not None and quickest is not best:
                ratio = ttft_ratio(quickest, ref)
                rows.append(
                    _row(
                        f"{target}, any KLD (context)", _k(quickest), _k(ref), _x(ratio), verdict(ratio, 1.0)
                    )
                )
    return rows


def _smallest(cands: list[Cell]) -> Cell | None:
    sized = [v for v in cands if v.get("disk_mb")]
    return min(sized, key=lambda v: v["disk_mb"]) if sized else None


def size_rows(llm: list[Cell], threads: list[int]) -> list[str]:
    """Model files on disk vs the GGUF of the same bits: the smallest edgekit variant at KLD ≤ the GGUF's
    (the smallest of its bits, marked, when none qualifies)."""
    rows = []
    t = threads[0] if threads else 1
    for bits, peer in (("int8", Q8_0), ("int4", Q4_0)):
        ref = cell(llm, peer, t)
        cands = edgekit_cells(llm, t, bits)
        mine = _smallest(qualifying(cands, ref))
        note = ""
        if mine is None:
            mine, note = _smallest(cands), " — KLD above the GGUF's"
        target = f"{bits} bundle size ≤ 1.05× {peer.split()[-1]} GGUF"
        if mine is None or ref is None or not ref.get("disk_mb"):
            rows.append(_row(target, _k(mine), _k(ref), "–", "n/a"))
            continue
        ratio = mine["disk_mb"] / ref["disk_mb"]
        value = f"{ratio:.2f}× ({mine['disk_mb']:.0f} / {ref['disk_mb']:.0f} MiB)"
        ok = verdict(ratio, 1.05, at_most=True)
        rows.append(
            _row(target, _k(mine) + note, _k(ref), value, f"NOT met (size alone: {ok})" if note else ok)
        )
    return rows


def build_rss_row(build: dict[str, Any] | None) -> list[str]:
    target = "build peak RSS ≤ 3× fp32 weights"
    build = build or {}
    what = f"`{build.get('command', 'edgekit build example:smollm2-135m --method int8-weight')}`"
    if build.get("measured"):
        # The record is cached under edgekit's fingerprint: it may predate this run.
        what += f", measured {build['measured']}"
    mem = build.get("memory") or {}
    if not mem.get("peak_rss_mb") or not mem.get("fp32_weights_mb"):
        why = build.get("error") or "not measured in this run"
        return [_row(target, what, "fp32 weights", f"n/a ({str(why)[:120]})", "n/a")]
    ratio = mem["peak_rss_mb"] / mem["fp32_weights_mb"]
    value = (
        f"{ratio:.2f}× ({mem['peak_rss_mb']:.0f} / {mem['fp32_weights_mb']:.0f} MiB, "
        f"peak in stage '{mem.get('peak_stage', '?')}')"
    )
    return [_row(target, what, "fp32 weights", value, verdict(ratio, 3.0, at_most=True))]


def scaling_rows(llm: list[Cell], threads: list[int]) -> list[str]:
    """decode at the most threads over decode at 1 thread, per variant: every edgekit one (with a verdict),
    and the peers the other rows compare against, for context."""
    if 1 not in threads or max(threads, default=1) == 1:
        return [
            _row("decode 2 threads ≥ 1.6× 1 thread", "n/a", "–", "– (this run has one thread count)", "n/a")
        ]
    hi = max(threads)
    rows = []
    peers = [c for c in (cell(llm, p, 1) for p in (Q8_0, Q4_0, OV_DEFAULT, OV_INT8, OV_INT4)) if c]
    for v in edgekit_cells(llm, 1) + peers:
        v_hi = cell(llm, v["name"], hi)
        ratio = decode_ratio(v_hi, v) if v_hi else None
        peer = not v["name"].startswith("edgekit ")
        rows.append(
            _row(
                f"decode {hi} threads ≥ 1.6× 1 thread{' (context)' if peer else ''}",
                "–" if peer else _k(v),
                _k(v) if peer else "itself at 1 thread",
                _x(ratio),
                "–" if peer else verdict(ratio, 1.6),
            )
        )
    return rows


NOTE = [
    "How each row's variant was chosen: decode rows take, at each thread count, the fastest edgekit variant of "
    "those bits (method int8* / int4*) whose KLD mean vs PyTorch fp32 is at most the llama.cpp type's on the same "
    "windows; TTFT rows take the edgekit variant (any method) with the lowest median TTFT at KLD at most the "
    "OpenVINO row's, and, when a quicker one has a worse KLD, that one too as context. OpenVINO's default is "
    "`optimum-cli export openvino` with no `--weight-format`: fp32 weights for a model under 1B parameters (it "
    "computes in bf16 on a CPU with AMX/AVX-512 bf16, see the OpenVINO note). Size rows take the smallest edgekit "
    "variant of those bits at KLD at most the GGUF's (model files only: .onnx + external data vs the .gguf). "
    "The build row is one `edgekit build` in a subprocess (build.json's memory record, this process's peak). "
    "KLDs are compared as point means; their intervals are in the tables above. 'met' needs the whole 95 % "
    "interval past the bar; 'n/a' means this run lacks the reference.",
]


def issue20_table(r: dict[str, Any]) -> list[str]:
    llm: list[Cell] = r.get("llm") or []
    threads: list[int] = list(r.get("settings", {}).get("threads") or [1])
    rows: list[str] = [
        *HEAD,
        *decode_rows(llm, "int8", Q8_0, threads),
        *decode_rows(llm, "int4", Q4_0, threads),
        *ttft_rows(llm, threads),
        *size_rows(llm, threads),
        *build_rss_row(r.get("build_memory")),
        *scaling_rows(llm, threads),
    ]
    return [*rows, "", *NOTE]


def issue20_section(r: dict[str, Any]) -> list[str]:
    head = "## Targets (issue 20): edgekit vs llama.cpp and OpenVINO, at equal or better fidelity"
    return [head, "", *issue20_table(r), ""]

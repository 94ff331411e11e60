"""benchmarks/targets.py: issue 20's targets table from synthetic results dicts (pure numpy; no model), and the
committed 2026-12-01 run rendered through it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import targets

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
ROUNDS = [1, 2, 3, 4, 5]


def _cell(
    name: str,
    method: str,
    decode: float | list[float],
    *,
    threads: int = 1,
    ttft: float = 0.1,
    kld: float | None = 0.01,
    disk_mb: float = 100.0,
) -> dict[str, Any]:
    """Two samples per round; `decode` is one rate for every round or one per round."""
    per_round = decode if isinstance(decode, list) else [decode] * len(ROUNDS)
    tps = [x for x in per_round for _ in range(2)]
    cell: dict[str, Any] = {
        "name": name,
        "method": method,
        "status": "ok",
        "threads": threads,
        "decode_tps": tps,
        "decode_tps_median": sorted(tps)[len(tps) // 2],
        "ttft_s": [ttft] * len(tps),
        "ttft_ms_median": ttft * 1e3,
        "sample_round": [r for r in ROUNDS for _ in range(2)],
        "disk_mb": disk_mb,
    }
    if kld is not None:
        cell["fidelity"] = {"kld_mean": {"value": kld, "ci95_low": kld * 0.9, "ci95_high": kld * 1.1}}
    return cell


def _results(llm: list[dict[str, Any]], threads: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"llm": llm, "settings": {"threads": threads or [1]}, **extra}


def _rows(r: dict[str, Any], starts: str) -> list[list[str]]:
    """The table's rows whose target starts with `starts`, split into cells."""
    out = []
    for line in targets.issue20_table(r):
        cols = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cols[0].startswith(starts):
            out.append(cols)
    return out


def test_int8_row_takes_the_fastest_variant_at_kld_no_worse_than_q8_0() -> None:
    r = _results(
        [
            # The fastest, but less faithful than Q8_0.
            _cell("edgekit int8-weight", "int8-weight", 20.0, kld=0.007),
            _cell("edgekit int8-dynamic", "int8-dynamic", 12.0, kld=0.005),
            _cell("edgekit fp32", "fp32", 30.0, kld=0.0),  # not int8: never the int8 row's variant
            _cell("llama.cpp Q8_0", "GGUF Q8_0", 10.0, kld=0.006),
        ]
    )
    (row,) = _rows(r, "int8 decode")
    assert row[1].startswith("edgekit int8-dynamic") and "0.005" in row[1] and "0.006" in row[2]
    assert row[3].startswith("1.20×") and row[4] == "met"


def test_no_qualifying_variant_is_not_met_and_names_the_fastest_for_context() -> None:
    r = _results(
        [
            _cell("edgekit int4-rtn", "int4-rtn", 40.0, kld=0.5),
            _cell("llama.cpp Q4_0", "GGUF Q4_0", 10.0, kld=0.4),
        ]
    )
    (row,) = _rows(r, "int4 decode")
    assert row[1].startswith("none at KLD ≤ 0.4") and "edgekit int4-rtn" in row[1]
    assert row[3] == "–" and row[4] == "NOT met"


def test_verdict_needs_the_whole_interval_past_the_bar() -> None:
    # Faster in three rounds, slower in two: the point value is above 1, the interval's low end is not.
    r = _results(
        [
            _cell("edgekit int8-weight", "int8-weight", [11.0, 11.0, 11.0, 7.0, 7.0], kld=0.005),
            _cell("llama.cpp Q8_0", "GGUF Q8_0", 10.0, kld=0.006),
        ]
    )
    (row,) = _rows(r, "int8 decode")
    assert row[3].startswith("1.10× [0.70") and row[4] == "NOT met"
    assert targets.verdict({"value": 1.2, "ci95_low": 1.01, "ci95_high": 1.4}, 1.0) == "met"
    assert targets.verdict({"value": 1.0, "ci95_low": 0.9, "ci95_high": 1.04}, 1.05, at_most=True) == "met"
    assert (
        targets.verdict({"value": 1.0, "ci95_low": 0.9, "ci95_high": 1.06}, 1.05, at_most=True) == "NOT met"
    )
    assert targets.verdict(None, 1.0) == "n/a"


def test_missing_peers_and_build_record_give_n_a() -> None:
    r = _results(
        [_cell("edgekit int8-weight", "int8-weight", 20.0), _cell("edgekit int4-rtn", "int4-rtn", 30.0)]
    )
    rows = targets.issue20_table(r)
    for starts in ("int8 decode", "int4 decode", "TTFT", "int8 bundle", "int4 bundle", "build peak RSS"):
        got = _rows(r, starts)
        assert got and all(row[-1] == "n/a" for row in got), (starts, got)
    assert any("not measured in this run" in line for line in rows)


def test_ttft_vs_openvino_default_at_its_kld_and_the_quicker_variant_for_context() -> None:
    r = _results(
        [
            _cell("edgekit fp32", "fp32", 10.0, ttft=0.10, kld=1e-9),
            _cell("edgekit int8-weight", "int8-weight", 20.0, ttft=0.05, kld=0.007),
            _cell("OpenVINO fp32", "OpenVINO fp32", 10.0, ttft=0.20, kld=0.001),
            _cell("OpenVINO int8", "OpenVINO int8", 10.0, ttft=0.04, kld=0.01),
        ]
    )
    default = _rows(r, "TTFT ≥ 1.0× OpenVINO default")
    assert [row[1].split(" (")[0] for row in default] == ["edgekit fp32", "edgekit int8-weight"]
    assert default[0][3].startswith("2.00×") and default[0][4] == "met"  # OpenVINO's TTFT / edgekit's
    assert "any KLD" in default[1][0] and default[1][3].startswith("4.00×")
    (int8,) = _rows(r, "TTFT ≥ 1.0× OpenVINO int8")  # int8-weight qualifies and is the quickest: one line
    assert int8[1].startswith("edgekit int8-weight") and int8[3].startswith("0.80×") and int8[4] == "NOT met"


def test_bundle_size_against_the_gguf_of_the_same_bits() -> None:
    r = _results(
        [
            _cell("edgekit int8-weight", "int8-weight", 20.0, kld=0.005, disk_mb=140.0),
            _cell("llama.cpp Q8_0", "GGUF Q8_0", 10.0, kld=0.006, disk_mb=138.0),
            _cell("edgekit int4-rtn", "int4-rtn", 20.0, kld=0.5, disk_mb=120.0),
            _cell("llama.cpp Q4_0", "GGUF Q4_0", 10.0, kld=0.4, disk_mb=88.0),
        ]
    )
    (int8,) = _rows(r, "int8 bundle")
    assert int8[3].startswith("1.01×") and int8[4] == "met"
    (int4,) = _rows(r, "int4 bundle")  # the only int4 variant is less faithful than Q4_0
    assert "KLD above" in int4[1] and int4[4].startswith("NOT met")


def test_build_rss_row_from_the_memory_record() -> None:
    mem = {"peak_rss_mb": 1500.0, "fp32_weights_mb": 538.0, "peak_stage": "export"}
    (row,) = _rows(_results([], build_memory={"memory": mem}), "build peak RSS")
    assert row[3].startswith("2.79×") and "export" in row[3] and row[4] == "met"
    mem["peak_rss_mb"] = 4150.0
    (row,) = _rows(_results([], build_memory={"memory": mem}), "build peak RSS")
    assert row[3].startswith("7.71×") and row[4] == "NOT met"
    (row,) = _rows(_results([], build_memory={"error": "RuntimeError: boom"}), "build peak RSS")
    assert "boom" in row[3] and row[4] == "n/a"


def test_two_thread_scaling_pairs_the_same_variant_by_round() -> None:
    r = _results(
        [
            _cell("edgekit int8-weight", "int8-weight", 10.0),
            _cell("edgekit int8-weight", "int8-weight", 18.0, threads=2),
            _cell("edgekit int4-rtn", "int4-rtn", 10.0),
            _cell("edgekit int4-rtn", "int4-rtn", 12.0, threads=2),
            _cell("llama.cpp Q8_0", "GGUF Q8_0", 10.0),
            _cell("llama.cpp Q8_0", "GGUF Q8_0", 19.0, threads=2),
        ],
        threads=[1, 2],
    )
    rows = _rows(r, "decode 2 threads")
    assert [(row[3][:5], row[4]) for row in rows] == [("1.80×", "met"), ("1.20×", "NOT met"), ("1.90×", "–")]
    assert "(context)" in rows[2][0] and rows[2][2].startswith("llama.cpp Q8_0")
    assert len(_rows(r, "int8 decode")) == 2  # one line per thread count


def test_committed_run_renders_with_the_build_row_n_a() -> None:
    import render

    r = json.loads((BENCH / "results" / "2026-12-01.json").read_text())
    md = render.markdown(r, "chart.png")
    section = md[md.index("## Targets (issue 20)") : md.index("## Rounds")]
    assert "## Targets (issue 9)" in md
    assert "| build peak RSS ≤ 3× fp32 weights |" in section and "not measured in this run" in section
    assert "llama.cpp Q8_0 (0.0058)" in section and "OpenVINO fp32 (0.0009)" in section
    assert section.count("| decode 2 threads ≥ 1.6× 1 thread") >= 4


@pytest.mark.parametrize("threads", [[1], [2]])
def test_one_thread_count_has_no_scaling_ratio(threads: list[int]) -> None:
    (row,) = _rows(_results([_cell("edgekit fp32", "fp32", 10.0, threads=threads[0])], threads), "decode 2")
    assert row[-1] == "n/a"

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.catalog import load_profile, load_target
from edgekit.fit import (
    Candidate,
    Outcome,
    ParamSplit,
    candidate_space,
    choose,
    estimate,
    mark_pareto,
    nearest_miss,
    parameter_split,
    prune,
)
from edgekit.source import load_source
from edgekit.specs import Target


def test_candidate_space_follows_target() -> None:
    cands = candidate_space(load_target("cuda"))
    labels = {c.label for c in cands}
    assert "fp16" in labels and "int8-dynamic" not in labels  # cuda target does not list it
    assert {"int4-hqq/block_size=32", "int4-hqq/block_size=64", "int4-hqq/block_size=128"} <= labels
    only = candidate_space(load_target("arm64"), ["int8-weight", "int4-rtn"])
    assert [c.method for c in only] == ["int8-weight", "int4-rtn", "int4-rtn", "int4-rtn"]


def _rotating(target: Target) -> Target:
    rotate = target.export.rotate.model_copy(update={"mode": "full"})
    return target.model_copy(update={"export": target.export.model_copy(update={"rotate": rotate})})


SMOL = ParamSplit(28_311_552, 28_311_552, 106_203_456, True)  # SmolLM2-135M: tied table, lm_head, the rest
SMOL_CFG = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536}
TABLE_MB = 28_311_552 * 4 / 1e6  # its fp32 token table


def test_parameter_split(tiny_model) -> None:  # type: ignore[no-untyped-def]
    src = load_source(str(tiny_model("llama")))
    split = parameter_split(src)
    assert split.embed > 0 and split.other > 0
    assert split.embed + split.head + split.other == src.fingerprint["parameters"]
    tied = load_source(str(tiny_model("gpt2")))  # GPT-2 ties wte and the lm_head: one tensor, two in an fp32 graph
    t = parameter_split(tied)
    assert t.tied and t.embed == t.head == 512 * 64 and t.embed + t.other == tied.fingerprint["parameters"]


def test_estimates_follow_written_sizes() -> None:
    x86 = load_target("x86-avx512-vnni")
    pi4 = load_profile("raspberry-pi-4")
    est = {m: estimate(Candidate(m), SMOL, pi4, x86, SMOL_CFG)
           for m in ("fp32", "int8-weight", "int8-dynamic", "int8-static", "int4-rtn", "int4-hqq")}
    # fit compresses int8-weight from a rotated export, as a build does, whether or not the target rotates.
    est["int8-weight-rotated"] = estimate(Candidate("int8-weight"), SMOL, pi4, _rotating(x86), SMOL_CFG)
    assert est["int8-weight-rotated"] == est["int8-weight"]
    est["fp16"] = estimate(Candidate("fp16"), SMOL, pi4, load_target("cuda"), SMOL_CFG)
    # model.onnx bytes of SmolLM2 built for x86-avx512-vnni, fp16 for cuda (2026-12-01; the tied table once, as
    # the lm_head's 8-bit blocks, for weight-only methods; rotated int8 in blocks of 64; the int4 lm_head's 64;
    # float16 block scales).
    # The estimate leaves out the rotary caches and norms (~2.2 MB) and a rotation's matrices (~1.5 MB): just
    # below, never far off.
    written = {"fp32": 653.5, "fp16": 326.8, "int8-weight": 142.6, "int8-weight-rotated": 142.6,
               "int8-dynamic": 251.3, "int8-static": 251.4, "int4-rtn": 93.0, "int4-hqq": 117.3}
    for method, mb in written.items():
        assert 0.97 * mb <= est[method]["size_mb"] <= mb, method
    # Bytes read per token: a Gather with a table of its own reads one row of it; a shared table is read whole
    # by the lm_head.
    bandwidth = est["fp32"]["decode_tokens_per_s"] * (est["fp32"]["size_mb"] - TABLE_MB)  # type: ignore[operator]
    # rel 2e-3: the estimate rounds tok/s to 0.1 (~0.1 % at SmolLM2 int4 speeds on a Pi 4), the sizes to 1 kB.
    assert est["int4-rtn"]["decode_tokens_per_s"] * est["int4-rtn"]["size_mb"] == pytest.approx(bandwidth, rel=2e-3)  # type: ignore[operator]


def test_estimates_follow_blocks_and_prune(tiny_model) -> None:  # type: ignore[no-untyped-def]
    pi4, arm = load_profile("raspberry-pi-4"), load_target("arm64")
    fp32 = estimate(Candidate("fp32"), SMOL, pi4, arm)
    int8 = estimate(Candidate("int8-weight"), SMOL, pi4, arm)
    int4 = {b: estimate(Candidate("int4-rtn", (("block_size", b),)), SMOL, pi4, arm) for b in (32, 64, 128)}
    assert fp32["size_mb"] > int8["size_mb"] > int4[32]["size_mb"] > int4[64]["size_mb"] > int4[128]["size_mb"]
    # arm64 keeps the int4 lm_head at the body's block: a smaller block costs it scales, x86's 64 does not.
    assert estimate(Candidate("int4-rtn"), SMOL, pi4, load_target("x86-avx2"))["size_mb"] < int4[32]["size_mb"]
    # Untied, the table is stored a second time (8-bit, its own); fp32 stores both either way.
    untied = SMOL._replace(tied=False)
    assert estimate(Candidate("int8-weight"), untied, pi4, arm)["size_mb"] > int8["size_mb"] + 25
    assert estimate(Candidate("fp32"), untied, pi4, arm)["size_mb"] == fp32["size_mb"]
    assert int4[32]["decode_tokens_per_s"] > fp32["decode_tokens_per_s"]
    # A 135M-parameter fp32 model cannot fit a 200 MB budget: pruned before anything is built.
    big = Outcome(Candidate("fp32"), fp32)
    prune(big, pi4, "text-generation")
    assert big.status == "pruned" and "200 MB" in big.reason
    split = parameter_split(load_source(str(tiny_model("llama"))))
    assert estimate(Candidate("fp32"), split, load_profile("local"), arm)["decode_tokens_per_s"] is None


def _outcome(label: str, size: float, kld: float, decode: float, status: str) -> Outcome:
    o = Outcome(Candidate(label), {"size_mb": size, "decode_tokens_per_s": None}, status=status)
    o.figures = {"size_mb": size, "kld_mean": kld, "decode_tokens_per_s": decode}
    o.report = {}
    if status == "rejected":
        o.failed_rules = [{"name": "fidelity.kld_mean_max", "margin_pct": -100 * kld}]
    return o


def test_choose_smallest_passing_and_pareto() -> None:
    outs = [_outcome("a", 500, 0.0, 20, "passed"), _outcome("b", 150, 0.002, 60, "passed"),
            _outcome("c", 90, 0.3, 110, "rejected"), _outcome("d", 160, 0.003, 50, "passed")]
    mark_pareto(outs)
    assert [o.pareto for o in outs] == [True, True, True, False]  # d is dominated by b
    best = choose(outs)
    assert best is not None and best.candidate.label == "b" and best.status == "chosen"


def test_nearest_miss_when_nothing_passes() -> None:
    outs = [_outcome("x", 90, 0.5, 110, "rejected"), _outcome("y", 150, 0.1, 60, "rejected")]
    assert choose(outs) is None
    near = nearest_miss(outs)
    assert near is not None and near.candidate.label == "y"


@pytest.mark.parametrize("methods", [["int4-magic"], ["fp16"]])
def test_bad_methods_exit_2(methods: list[str], tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli

    res = run_cli("fit", str(tiny_model("llama")), "--profile", "local", "-o", str(tmp_path / "o"),
                  "--methods", ",".join(methods))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def test_fit_end_to_end_picks_and_explains(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.conftest import run_cli

    out = tmp_path / "fit"
    res = run_cli("fit", str(tiny_model("llama")), "--profile", "local", "-o", str(out), "--methods",
                  "int8-weight,int4-rtn", "--max-candidates", "2", "--json", *FAST)
    data = json.loads((out / "fit.json").read_text())
    statuses = {c["label"]: c["status"] for c in data["candidates"]}
    # Exit 0 exactly when a candidate was chosen (then it is the one marked chosen), 1 when none fits; never 2.
    assert res.returncode == (0 if data["chosen"] else 1), res.stderr
    assert [k for k, v in statuses.items() if v == "chosen"] == ([data["chosen"]] if data["chosen"] else [])
    assert len(statuses) == 4  # int8-weight + int4-rtn at three block sizes
    # int8-weight and int4-rtn at block 32 first; the coarser int4 blocks only if block 32 kept fidelity
    assert sum(s in ("skipped", "pruned") for s in statuses.values()) == 2
    for c in data["candidates"]:
        assert c["status"] in ("chosen", "passed") or c["reason"], c
    assert (out / "fit.md").is_file() and (out / "fit.png").stat().st_size > 1000
    assert run_cli("verify", str(out)).returncode == 0


def test_fit_impossible_profile_names_nearest_miss(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import REPO, run_cli

    prof = tmp_path / "p.yaml"
    prof.write_text((REPO / "profiles" / "local.yaml").read_text().replace("model_size_mb: 1000", "model_size_mb: 0.01"))
    res = run_cli("fit", str(tiny_model("llama")), "--profile", str(prof), "-o", str(tmp_path / "fit"),
                  "--methods", "int8-weight", *FAST)
    assert res.returncode == 1
    assert "nearest miss: int8-weight" in res.stderr and "budgets.model_size_mb" in res.stderr


def test_fit_relative_output_with_a_tool_that_changes_directory(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """quantize_dynamic runs inside its own temp folder: a relative work path once broke it."""
    from tests.conftest import run_cli

    res = run_cli("fit", str(tiny_model("bert-emb")), "--profile", "local", "-o", "fit", "--methods", "int8-dynamic",
                  *FAST, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed" not in res.stdout


def test_int8_weight_candidates_come_from_the_rotated_export_a_build_makes(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.fit import EvalOptions
    from edgekit.fit.search import Shared

    target = load_target("x86-avx2")
    plain = tmp_path / "plain"
    shared = Shared(None, plain, load_source(str(tiny_model("llama"))), load_profile("local"), target, tmp_path / "w",
                    float("inf"), EvalOptions(), SourceOutputs(tmp_path, {}), 4)
    assert shared.parent("int4-rtn") == plain
    rotated = shared.parent("int8-weight")
    assert rotated != plain and shared.parent("int8-weight") == rotated  # made once
    assert json.loads((rotated / "export.json").read_text())["rotation"]["mode"] == "full"

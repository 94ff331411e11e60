from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.catalog import load_profile, load_target
from edgekit.fit import (
    Candidate,
    Outcome,
    candidate_space,
    choose,
    estimate,
    mark_pareto,
    nearest_miss,
    parameter_split,
    prune,
)
from edgekit.source import load_source


def test_candidate_space_follows_target() -> None:
    cands = candidate_space(load_target("cuda"))
    labels = {c.label for c in cands}
    assert "fp16" in labels and "int8-dynamic" not in labels  # cuda target does not list it
    assert {"int4-hqq/block_size=32", "int4-hqq/block_size=64", "int4-hqq/block_size=128"} <= labels
    only = candidate_space(load_target("arm64"), ["int8-weight", "int4-rtn"])
    assert [c.method for c in only] == ["int8-weight", "int4-rtn", "int4-rtn", "int4-rtn"]


def test_estimates_order_and_prune(tiny_model) -> None:  # type: ignore[no-untyped-def]
    src = load_source(str(tiny_model("llama")))
    embed, other = parameter_split(src)
    assert embed > 0 and other > 0 and embed + other == src.fingerprint["parameters"]
    tied = load_source(str(tiny_model("gpt2")))  # GPT-2 ties wte and the lm_head: one tensor, two in the graph
    t_embed, t_other = parameter_split(tied)
    assert t_embed == 2 * 512 * 64 and t_embed / 2 + t_other == tied.fingerprint["parameters"]
    pi4 = load_profile("raspberry-pi-4")
    smol = (2 * 28_311_552, 106_203_456)  # SmolLM2-135M: tied embedding, stored twice in the graph; the rest
    fp32 = estimate(Candidate("fp32"), *smol, pi4)
    int8 = estimate(Candidate("int8-weight"), *smol, pi4)
    int4 = estimate(Candidate("int4-rtn", (("block_size", 32),)), *smol, pi4)
    assert fp32["size_mb"] > int8["size_mb"] > int4["size_mb"]
    # What the fused graphs of SmolLM2 wrote (model.onnx bytes, 2026-12-01): 653.5 / 186.4 / 134.8 / 159.3 MB.
    # The estimate leaves out the rotary caches and norms (~2.2 MB), so it may sit just below, never far off.
    smol_cfg = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536}
    hqq = estimate(Candidate("int4-hqq", (("block_size", 32),)), *smol, pi4, smol_cfg)
    for est, written in ((fp32, 653.5), (int8, 186.4), (int4, 134.8), (hqq, 159.3)):
        assert 0.97 * written <= est["size_mb"] <= written
    assert int4["decode_tokens_per_s"] > fp32["decode_tokens_per_s"]
    # A 135M-parameter fp32 model cannot fit a 200 MB budget: pruned before anything is built.
    big = Outcome(Candidate("fp32"), fp32)
    prune(big, pi4, "text-generation")
    assert big.status == "pruned" and "200 MB" in big.reason
    assert estimate(Candidate("fp32"), embed, other, load_profile("local"))["decode_tokens_per_s"] is None


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

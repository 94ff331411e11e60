"""fit's source outputs (computed once, cached) and its executors: the same choice and fidelity on Ray as locally."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.source import load_source

FAST = {"eval_tokens": 48, "max_time_s": 0.5, "decode_prompts": 2}


def test_source_outputs_cached_by_source_and_eval_text(tiny_model, tiny_onnx, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.bench.fidelity import measure_fidelity
    from edgekit.bench.sourceref import source_outputs
    from edgekit.bundle.reference_build import make_reference

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    source = load_source(str(tiny_model("llama")))
    first = source_outputs(source, None, 64, 2)
    again = source_outputs(source, None, 64, 2)
    assert not first.hit and again.hit and again.key == first.key
    text = tmp_path / "eval.txt"
    text.write_text("A different held-out text, long enough to give a window or two of tokens to predict.\n" * 4)
    other = source_outputs(source, text, 64, 2)
    assert not other.hit and other.key != first.key
    assert source_outputs(source, None, 80, 2).key != first.key  # the token count is in the key
    # The cached logits are the model's own: a window recomputed live gives the same float32 numbers.
    import torch

    (_, win), logits = first.windows()[0], next(first.window_logits())
    with torch.inference_mode():
        live = source.load_model()(torch.tensor([win])).logits[0].float().numpy()[:-1]
    np.testing.assert_array_equal(logits, live)
    # Fidelity and the bundle's reference.npz both read the cache: a hit, no second source run.
    fid = measure_fidelity(tiny_onnx("llama").session(), source, None, 64, again)
    assert fid["top1_agreement"]["value"] == 1.0 and fid["top1_agreement"]["n"] == first.meta["positions"]
    assert make_reference(source, None, 64, outputs=again).positions == first.meta["positions"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster started by the test (2 CPUs, no dashboard), shared by this module's tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    yield ray
    ray.shutdown()


def _fidelity(fit_json: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1_agreement", "kld_mean", "ppl_ratio", "size_mb")
    return {c["label"]: (c["status"], {k: c["figures"].get(k) for k in keys}) for c in fit_json["candidates"]}


def test_fit_on_ray_matches_the_local_run(ray_cluster, tiny_model, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.catalog import load_profile
    from edgekit.fit.executors import ExecutorSpec
    from edgekit.fit.run import FitOptions, fit_profiles

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    src = str(tiny_model("llama"))
    local = load_profile("local")
    twin = tmp_path / "local-twin.yaml"  # same target, another budget: shares every candidate with `local`
    twin.write_text((Path(__file__).parents[2] / "profiles" / "local.yaml").read_text()
                    .replace("name: local", "name: local-twin").replace("model_size_mb: 1000", "model_size_mb: 900"))
    base = {"methods": ["int8-weight", "int4-rtn"], "max_candidates": 2, "bench_options": FAST,
            "allow_implausible_source": True}  # a random-weight model
    one = fit_profiles(src, [local], tmp_path / "local", FitOptions(**base, executor=ExecutorSpec("local", 1)))
    both = fit_profiles(src, [local, load_profile(str(twin))], tmp_path / "ray",
                        FitOptions(**base, executor=ExecutorSpec("ray", 2)))
    assert [r.profile for r in both] == ["local", "local-twin"]
    assert [o.status for o in one[0].outcomes] == [o.status for o in both[0].outcomes]
    loc = json.loads((tmp_path / "local" / "fit.json").read_text())
    ray = json.loads((tmp_path / "ray" / "local" / "fit.json").read_text())
    twin_json = json.loads((tmp_path / "ray" / "local-twin" / "fit.json").read_text())
    # Deterministic work: the same statuses, choice and fidelity figures to the last digit.
    assert ray["chosen"] == loc["chosen"] and _fidelity(ray) == _fidelity(loc)
    assert loc["executor"] == {"kind": "local", "workers": 1, "pool": "inline"}
    assert ray["executor"]["kind"] == "ray" and ray["executor"]["workers"] == 2 and not ray["executor"]["started_here"]
    # The source ran once: the local fit stored its outputs, the Ray fit read them.
    assert not loc["source_outputs"]["hit"] and ray["source_outputs"]["hit"]
    assert ray["source_outputs"]["key"] == loc["source_outputs"]["key"]
    assert ray["latency_host"]["hostname"] and "isa_flags" in ray["latency_host"]
    benched = [c for c in ray["candidates"] if c["fidelity_worker"]]
    assert benched and all(c["fidelity_worker"]["pid"] != os.getpid() and c["fidelity_worker"].get("ray_node")
                           for c in benched)
    # Two profiles of one target: each candidate compressed and checked once, its result read by both.
    assert ray["shared_with"] == ["local-twin"] and twin_json["shared_with"] == ["local"]
    for a, b in zip(ray["candidates"], twin_json["candidates"], strict=True):
        assert a["fidelity_worker"] == b["fidelity_worker"] and a["seconds"] == b["seconds"]
        # Same workload on the same host: the twin reuses local's latency measurement instead of timing again.
        if a["status"] in ("chosen", "passed", "rejected"):
            assert a["latency_measured_for"] == b["latency_measured_for"] == "local"
            assert a["figures"]["decode_tokens_per_s"] == b["figures"]["decode_tokens_per_s"]
    summary = json.loads((tmp_path / "ray" / "fit-summary.json").read_text())
    assert [r["profile"] for r in summary["results"]] == ["local", "local-twin"]


def test_a_candidate_failing_on_a_ray_worker_is_recorded(ray_cluster, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.catalog import load_profile, load_target
    from edgekit.fit import Candidate, EvalOptions, Outcome
    from edgekit.fit.executors import ExecutorSpec, open_executor
    from edgekit.fit.search import Plan, Shared, search

    profile = load_profile("local")
    # Methods compressed from the given export (int8-weight would make its own rotated one: Shared.parent).
    cands = [Candidate("int4-hqq", (("block_size", 32),)), Candidate("int4-rtn", (("block_size", 32),))]
    plan = Plan(profile, [Outcome(c, {"size_mb": 1.0, "decode_tokens_per_s": None}) for c in cands])
    missing = tmp_path / "no-export"  # every task fails on its worker: there is nothing to compress
    with open_executor(ExecutorSpec("ray", 2)) as pool:
        shared = Shared(pool, missing, load_source(str(tiny_model("llama"))), profile, load_target(profile.target),
                        tmp_path / "work", float("inf"), EvalOptions(), SourceOutputs(tmp_path, {}), 12)
        search([plan], shared)
    # Both were tried (the first failure did not end the search); the reason is the task's own error, not Ray's.
    assert [o.status for o in plan.outcomes] == ["failed", "failed"]
    assert all(o.reason and "RayTaskError" not in o.reason and "no-export" in o.reason for o in plan.outcomes), \
        [o.reason for o in plan.outcomes]


def test_executor_ray_without_ray_is_exit_2(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli

    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    res = run_cli("fit", str(tiny_model("llama")), "--profile", "local", "-o", str(tmp_path / "o"),
                  "--executor", "ray", env={"PYTHONPATH": path})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "needs ray" in res.stderr and "edgekit[ray]" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

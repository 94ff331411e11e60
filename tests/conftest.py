from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Offline and quiet: a mistyped path must never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tiny fixtures are random-weight models: their PPL is genuinely implausible (worse than a byte-frequency
# table), so every command here runs with the source-check override, which each report and manifest records.
# Tests of the source checks themselves set it to "0".
os.environ.setdefault("EDGEKIT_ALLOW_IMPLAUSIBLE_SOURCE", "1")

from tests.tiny import CAUSAL, ENCODERS, build_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # On 2 cores torch's default thread pool is up to 20x slower on tiny ops.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def _tokenizers() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path, _tokenizers: dict[str, Any]):  # type: ignore[no-untyped-def]
    """tiny_model("llama") → Path of a cached tiny HF folder (built once per session)."""

    def get(name: str) -> Path:
        out = tiny_dir / name
        if not (out / "config.json").is_file():
            build_tiny(name, out, _tokenizers)
        return out

    return get


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """tiny_onnx("llama") → OnnxArtifact of the tiny model exported for x86-avx2, once per session.

    The one tiny export every module shares: tests read it, never change it (copy it first to corrupt it).
    """
    from edgekit.catalog import load_target
    from edgekit.export import export
    from edgekit.source import load_source

    root = tmp_path_factory.mktemp("tiny-exports")
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = export(load_source(str(tiny_model(name))), load_target("x86-avx2"), root / name)
        return cache[name]

    return get


@pytest.fixture(params=CAUSAL)
def tiny_causal(request: pytest.FixtureRequest, tiny_model) -> Path:  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


@pytest.fixture(params=ENCODERS)
def tiny_encoder(request: pytest.FixtureRequest, tiny_model) -> Path:  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):  # type: ignore[no-untyped-def]
    """Run the real `edgekit` console script in a subprocess, as a user would."""
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    full_env = {**base, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


def plumbing_profile(folder: Path) -> Path:
    """profiles/local.yaml with a top-1 floor of 0.8: on a random-weight tiny model 48 eval tokens put int8's top-1
    around 0.9, so the real floor is decided by one token that any change to the quantizer redraws. Tests of the
    pipeline's plumbing that need a passing gate use this; the gate's own tests keep the real profiles."""
    text = (REPO / "profiles" / "local.yaml").read_text()
    assert "top1_agreement_min: 0.90" in text and "name: local\n" in text
    path = folder / "local-plumbing.yaml"
    path.write_text(text.replace("top1_agreement_min: 0.90", "top1_agreement_min: 0.80")
                    .replace("name: local\n", "name: local-plumbing\n"))
    return path


def assert_exit_follows_gate(res: Any, gate_file: Path) -> dict[str, Any]:
    """A build of a tiny model may pass or fail its gate, but never crash (2) and never exit with a code that
    disagrees with gate.json; each decided rule's status must follow from its value and threshold."""
    import json

    assert gate_file.is_file(), res.stderr
    gate: dict[str, Any] = json.loads(gate_file.read_text())
    assert res.returncode == (0 if gate["passed"] else 1), res.stderr
    for rule in gate["rules"]:
        if rule["status"] in ("pass", "FAIL") and not (rule["strict"] and rule["uncertain"]):
            inside = rule["value"] <= rule["threshold"] if rule["kind"] == "max" else rule["value"] >= rule["threshold"]
            assert (rule["status"] == "pass") == inside, rule
    assert gate["passed"] == all(r["status"] in ("pass", "n/a") for r in gate["rules"])
    return gate

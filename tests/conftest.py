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

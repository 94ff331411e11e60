from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.catalog import load_target
from edgekit.export import export
from edgekit.runtime import Decoder, make_session
from edgekit.source import load_source
from tests.conftest import run_cli

ALL = ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma3", "bert-cls", "bert-emb")


@pytest.fixture
def exported(tiny_onnx):  # type: ignore[no-untyped-def]
    """exported("llama") → the folder of the session's tiny export (tests/conftest.py `tiny_onnx`)."""
    return lambda name: tiny_onnx(name).path


@pytest.mark.parametrize("name", ALL)
def test_every_architecture_exports_with_parity(name: str, exported) -> None:  # type: ignore[no-untyped-def]
    folder = exported(name)
    record = json.loads((folder / "export.json").read_text())
    assert record["schema"] == "edgekit/export@1" and record["method"] == "fp32"
    assert record["parity"]["passed"] and record["parity"]["max_abs_diff"] < record["parity"]["tolerance"]
    assert (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file()
    assert not (folder / "raw").exists() and not (folder / "opt").exists()
    assert record["versions"]["onnxruntime"] and record["timings_s"]["total"] > 0
    causal = not name.startswith("bert")
    assert record["with_past"] is causal
    if causal:
        assert record["parity"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3"])
def test_kv_cache_decode_matches_full_forward(name: str, exported) -> None:  # type: ignore[no-untyped-def]
    dec = Decoder(make_session(exported(name) / "model.onnx"))
    ids = np.array([[5, 17, 42, 99, 7, 3]], dtype=np.int64)
    full, _ = dec.forward(ids, None, 0)
    _, cache = dec.forward(ids[:, :4], None, 0)
    step1, cache = dec.forward(ids[:, 4:5], cache, 4)
    step2, _ = dec.forward(ids[:, 5:6], cache, 5)
    np.testing.assert_allclose(step1[0, -1], full[0, 4], atol=1e-4)
    np.testing.assert_allclose(step2[0, -1], full[0, 5], atol=1e-4)


def test_bert_gets_transformer_fusions(exported) -> None:  # type: ignore[no-untyped-def]
    record = json.loads((exported("bert-emb") / "export.json").read_text())
    fusions = record["optimization"]["transformer_fusions"]
    assert fusions.get("Attention", 0) >= 1 and record["optimization"]["shipped"] == "optimized"


def test_cli_export_json_and_onnx_source(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x"
    res = run_cli("export", str(tiny_model("qwen2")), "--target", "arm64", "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["target"] == "arm64" and data["parity"]["top1_agreement"] == 1.0
    # An ONNX folder as SOURCE is adopted as is.
    again = tmp_path / "y"
    res = run_cli("export", str(out), "--target", "arm64", "-o", str(again), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["adopted"] is True


def test_export_replaces_previous_output_atomically(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export(load_source(str(tiny_model("llama"))), load_target("x86-avx2"), out, parity=False)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


@pytest.mark.slow
def test_smollm2_export_parity(tmp_path: Path) -> None:
    art = export(load_source("example:smollm2-135m"), load_target("x86-avx2"), tmp_path / "smol")
    assert art.meta["parity"]["top1_agreement"] == 1.0 and art.meta["with_past"]
    # Streaming across multi-byte characters: pieces join to the full decode (bar a last, unfinished character).
    from edgekit.runtime import Decoder, Model

    model = Model(art.path)
    prompt = "Write the word hello in Japanese, Chinese and Russian:"
    streamed = "".join(model.stream(prompt, 40))
    tokens = list(Decoder(model.session).tokens(model.encode(prompt), 40, eos=model.eos_ids))
    full = model.tokenizer.decode(tokens, skip_special_tokens=True)
    assert any(ord(c) > 127 for c in streamed) and full.rstrip("\ufffd") == streamed


@pytest.mark.slow
def test_minilm_export_parity(tmp_path: Path) -> None:
    art = export(load_source("example:minilm-l6"), load_target("x86-avx2"), tmp_path / "minilm")
    assert art.task == "feature-extraction" and art.meta["parity"]["passed"]

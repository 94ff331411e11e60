"""The fused decoder writer (edgekit.fused): GroupQueryAttention graphs that match PyTorch and optimum's export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgekit.catalog import load_target
from edgekit.errors import UnsupportedError
from edgekit.export import choose_writer, export, fused
from edgekit.runtime import Decoder, make_session
from edgekit.source import load_source
from tests.conftest import run_cli

AVX2 = load_target("x86-avx2")


def _ops(folder: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _greedy_logits(folder: Path, steps: int = 4) -> np.ndarray:
    dec = Decoder(make_session(folder / "model.onnx"))
    ids = [5, 17, 42, 99, 7, 3, 11]
    logits, cache = dec.forward(np.asarray([ids], dtype=np.int64), None, 0)
    rows = [logits[0, -1]]
    for _ in range(steps):
        nxt = int(logits[0, -1].argmax())
        logits, cache = dec.forward(np.asarray([[nxt]], dtype=np.int64), cache, len(ids))
        ids.append(nxt)
        rows.append(logits[0, -1])
    return np.stack(rows)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "phi3"])
def test_fused_graph_matches_optimum_and_pytorch(name: str, tiny_model: Any, tmp_path: Path) -> None:
    src = load_source(str(tiny_model(name)))
    fused_dir = export(src, AVX2, tmp_path / "fused", graph="fused").path
    traced_dir = export(src, AVX2, tmp_path / "optimum", graph="optimum", parity=False).path
    record = json.loads((fused_dir / "export.json").read_text())
    assert record["graph"]["writer"] == "edgekit.fused"
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    ops = _ops(fused_dir)
    layers = src.config["num_hidden_layers"]
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    # Every family the same 11 nodes a layer: 2 norms, qkv, GQA, o_proj, gate_up and its Split (one MatMulNBits
    # after quantization, not two), Sigmoid, 2 Mul, down; plus an Add per biased linear (Qwen2's qkv).
    layer = [n.op_type for n in onnx.load(str(fused_dir / "model.onnx"), load_external_data=False).graph.node
             if n.name.startswith("/model/layers.1/")]
    assert len(layer) - layer.count("Add") == 11 and layer.count("Add") == (1 if name == "qwen2" else 0)
    assert layer.count("MatMul") == 4 and layer.count("Split") == 1
    assert sum(ops.values()) < sum(_ops(traced_dir).values()) / 3
    # Prefill then four KV-cache steps: the same logits as optimum's traced graph.
    np.testing.assert_allclose(_greedy_logits(fused_dir), _greedy_logits(traced_dir), atol=2e-4, rtol=1e-4)


def _torch_greedy_logits(folder: Path, steps: int = 4) -> np.ndarray:
    """_greedy_logits from PyTorch itself (its own KV cache), for configs optimum's trace is not trusted with."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 11]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps + 1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return np.stack([row[0].numpy() for row in out.logits])


@pytest.mark.parametrize(("name", "windows"), [("mistral-swa", [5] * 4), ("qwen2-swa", [-1, -1, 5, 5]),
                                               ("phi3-swa", [5] * 4)])
def test_sliding_windows_match_pytorch(name: str, windows: list[int], tiny_model: Any, tmp_path: Path) -> None:
    """Windows of 5 under a ~50-token parity prompt and a 12-position generation: a window dropped, put on the
    wrong layers or off by one fails parity (checked: sliding_window - 1 gives top-1 agreement ~0.2)."""
    src = load_source(str(tiny_model(name)))
    folder = export(src, AVX2, tmp_path / "fused", graph="fused").path
    record = json.loads((folder / "export.json").read_text())
    assert record["graph"]["writer"] == "edgekit.fused"
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    gqa = [n for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node
           if n.op_type == "GroupQueryAttention"]
    assert [onnx.helper.get_attribute_value(a) for n in gqa for a in n.attribute if a.name == "local_window_size"] \
        == windows
    np.testing.assert_allclose(_greedy_logits(folder), _torch_greedy_logits(tiny_model(name)), atol=2e-4, rtol=1e-4)


def test_writer_choice(tiny_model: Any) -> None:
    gpt2 = load_source(str(tiny_model("gpt2")))
    llama = load_source(str(tiny_model("llama")))
    assert choose_writer(llama, "auto") == "fused" and choose_writer(llama, "optimum") == "optimum"
    assert choose_writer(gpt2, "auto") == "optimum"
    with pytest.raises(UnsupportedError, match="use --graph optimum"):
        choose_writer(gpt2, "fused")


def test_unsupported_configs_are_named() -> None:
    assert fused.unsupported_reason("llama", {"hidden_act": "silu"}) is None
    assert "gelu" in (fused.unsupported_reason("llama", {"hidden_act": "gelu"}) or "")
    assert "dynamic" in (fused.unsupported_reason("llama", {"rope_scaling": {"rope_type": "dynamic"}}) or "")
    assert "gpt2" in (fused.unsupported_reason("gpt2", {}) or "")
    longrope = {"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}
    assert "longrope" in (fused.unsupported_reason("phi3", longrope) or "")
    assert fused.unsupported_reason("phi3", {"sliding_window": 2047}) is None
    assert fused.unsupported_reason("qwen2", {"use_sliding_window": True, "sliding_window": 4096}) is None


def test_cli_fused_for_an_encoder_exits_2(tiny_model: Any, tmp_path: Path) -> None:
    res = run_cli("export", str(tiny_model("bert-emb")), "--target", "x86-avx2", "-o", str(tmp_path / "x"),
                  "--graph", "fused")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "use --graph optimum" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_generation_updates_the_cache_in_place(tiny_model: Any, tmp_path: Path) -> None:
    """Fused graphs are marked for GroupQueryAttention's shared KV buffer; the IO-bound loop picks the same tokens."""
    from edgekit.compress import compress

    src = load_source(str(tiny_model("llama")))
    fp32 = export(src, AVX2, tmp_path / "fused", parity=False)
    int4 = compress(fp32, "int4-rtn", AVX2, tmp_path / "int4", calibration_samples=2)
    traced = export(src, AVX2, tmp_path / "optimum", graph="optimum", parity=False)
    assert not Decoder(make_session(traced.path / "model.onnx")).shared_kv
    for folder in (fp32.path, int4.path):
        dec = Decoder(make_session(folder / "model.onnx"))
        assert dec.shared_kv
        shared = dec.generate(list(range(5, 25)), 24).tokens
        dec.shared_kv = False
        assert dec.generate(list(range(5, 25)), 24).tokens == shared


def test_lm_head_only_for_the_last_position_when_generating(tiny_model: Any, tmp_path: Path) -> None:
    """Generation feeds num_logits_to_keep=1 (prefill computes one lm_head row, not one per prompt position);
    fidelity and parity feed nothing and get every position. Quantized graphs keep the input."""
    from edgekit.compress import compress

    src = load_source(str(tiny_model("llama")))
    fp32 = export(src, AVX2, tmp_path / "fused", parity=False)
    int8 = compress(fp32, "int8-weight", AVX2, tmp_path / "int8", calibration_samples=2)
    prompt = list(range(5, 25))
    for folder in (fp32.path, int8.path):
        dec = Decoder(make_session(folder / "model.onnx"))
        assert dec.keeps_last
        full = dec.logits(prompt)
        assert full.shape[0] == len(prompt)
        last, _ = dec.forward(np.asarray([prompt], dtype=np.int64), None, 0, last_only=True)
        assert last.shape[:2] == (1, 1)
        np.testing.assert_allclose(last[0, 0], full[-1], rtol=1e-4, atol=1e-4)
        # Both generation cache strategies get one row of logits from the prefill.
        from edgekit.runtime import _NumpyCache, _SharedCache

        assert _SharedCache(dec, 64)(prompt).shape[:2] == (1, 1) and _NumpyCache(dec)(prompt).shape[:2] == (1, 1)
        tokens = dec.generate(prompt, 16).tokens
        # The old way, every position's logits through a numpy cache, picks the same tokens.
        logits, cache = dec.forward(np.asarray([prompt], dtype=np.int64), None, 0)
        assert logits.shape[1] == len(prompt)
        old: list[int] = []
        while len(old) < 16:
            old.append(int(logits[0, -1].argmax()))
            logits, cache = dec.forward(np.asarray([old[-1:]], dtype=np.int64), cache, len(prompt) + len(old) - 1)
        assert old == tokens

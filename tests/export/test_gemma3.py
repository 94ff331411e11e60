"""The fused writer's Gemma-3 graph (edgekit.export.gemma3) against PyTorch.

The tiny gemma3 of tests/tiny.py has all-zero norm weights (Gemma's init; (1 + w) = 1), four sliding layers and
a window of 64: a graph that dropped the (1 + w), the global layers' rotary base or the window would still match
it. The variant here has random norms, a window of 8 under a 40-token prompt, global layers with their own rope
base and linear scaling, a query_pre_attn_scalar unlike head_dim and final logit soft-capping.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgekit.catalog import load_target
from edgekit.errors import UnsupportedError
from edgekit.export import export, fused
from edgekit.runtime import Decoder, make_session
from edgekit.source import load_source
from tests.conftest import run_cli

AVX2 = load_target("x86-avx2")
WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
PROMPT = [(7 * i + 3) % 500 + 2 for i in range(40)]  # 5x the window


def _variant_model(base: Path, window: int = WINDOW, **shape: Any) -> Any:
    """The variant (see above); `shape`: other config keys, whose weights are then random, not the base's."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = json.loads((base / "config.json").read_text())
    cfg.update(sliding_window=window, layer_types=LAYER_TYPES, rope_theta=50_000.0, rope_local_base_freq=10_000.0,
               rope_scaling={"rope_type": "linear", "factor": 2.0}, query_pre_attn_scalar=24,
               final_logit_softcapping=4.0)
    cfg.update(shape)
    torch.manual_seed(1)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval()
    if not shape:
        model.load_state_dict(Gemma3ForCausalLM.from_pretrained(base).state_dict())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def variant(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_model("gemma3")
    out = tmp_path_factory.mktemp("gemma3-variant")
    _variant_model(base).save_pretrained(out, safe_serialization=True)
    for f in base.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy2(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def fused_export(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(load_source(str(variant)), AVX2, tmp_path_factory.mktemp("g3") / "fused", graph="fused").path


def _torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


def _onnx_logits(folder: Path, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    """Prompt logits, then `steps` greedy decode steps through the KV cache: [len(prompt) + steps, vocab]."""
    dec = Decoder(make_session(folder / "model.onnx"))
    logits, cache = dec.forward(np.asarray([prompt], dtype=np.int64), None, 0)
    rows, ids = list(logits[0]), list(prompt)
    for _ in range(steps):
        ids.append(int(rows[-1].argmax()))
        logits, cache = dec.forward(np.asarray([ids[-1:]], dtype=np.int64), cache, len(ids) - 1)
        rows.append(logits[0, -1])
    return np.stack(rows), ids


def test_fused_gemma3_matches_pytorch_beyond_the_window(variant: Path, fused_export: Path) -> None:
    record = json.loads((fused_export / "export.json").read_text())
    assert record["graph"]["writer"] == "edgekit.fused"
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    got, ids = _onnx_logits(fused_export, PROMPT, steps=6)
    model = _variant_model(variant)
    want = _torch_logits(model, ids)[: len(got)]
    np.testing.assert_allclose(got, want, atol=2e-4 * float(np.abs(want).max()), rtol=1e-4)
    assert np.abs(want).max() <= 4.0  # soft-capped
    # The prompt exercises the window: without it PyTorch's logits past the window differ.
    unwindowed = _torch_logits(_variant_model(variant, window=4096), ids)[: len(got)]
    assert np.abs(unwindowed[WINDOW:] - want[WINDOW:]).max() > 100 * np.abs(got - want).max()
    # Generation's shared KV buffer (GQA updates it in place) picks the same tokens as the fed-back cache.
    dec = Decoder(make_session(fused_export / "model.onnx"))
    assert dec.shared_kv and dec.generate(PROMPT, 6).tokens == ids[len(PROMPT):]


def test_gemma3_1b_shaped_heads_and_a_tied_head(tiny_model: Any, tmp_path: Path) -> None:
    """Gemma-3 1B's attention shape (head_dim 256, one KV head, a global layer every 6th) and a tied lm_head."""
    model = _variant_model(tiny_model("gemma3"), layer_types=None, sliding_window_pattern=6, num_hidden_layers=7,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                           tie_word_embeddings=True, rope_scaling=None, final_logit_softcapping=None)
    assert model.config.layer_types.count("full_attention") == 1 and model.lm_head.weight is model.model.embed_tokens.weight
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=True)
    for f in tiny_model("gemma3").iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy2(f, src / f.name)
    art = export(load_source(str(src)), AVX2, tmp_path / "fused", graph="fused")
    got, ids = _onnx_logits(art.path, PROMPT, steps=4)
    want = _torch_logits(model, ids)[: len(got)]
    np.testing.assert_allclose(got, want, atol=2e-4 * float(np.abs(want).max()), rtol=1e-4)


def test_fused_gemma3_graph_layout(variant: Path, fused_export: Path) -> None:
    """19 nodes a layer: GQA with rotary inside, q/k norms, two Skip and two plain norms (post-attention/ff)."""
    ops: dict[str, int] = {}
    nodes = onnx.load(str(fused_export / "model.onnx"), load_external_data=False).graph.node
    for n in nodes:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    layers = len(LAYER_TYPES)
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["SimplifiedLayerNormalization"] == 4 * layers + 1 and ops["FastGelu"] == layers
    windows = [next(a.i for a in n.attribute if a.name == "local_window_size") for n in nodes
               if n.op_type == "GroupQueryAttention"]
    assert windows == [WINDOW if t == "sliding_attention" else -1 for t in LAYER_TYPES]
    per_layer = sum(1 for n in nodes if n.name.startswith("/model/layers.1/"))
    assert per_layer == 19


def test_gemma3_at_opset_20_uses_onnx_gelu(variant: Path, tmp_path: Path) -> None:
    art = export(load_source(str(variant)), AVX2, tmp_path / "o20", graph="fused", opset=20)
    record = json.loads((art.path / "export.json").read_text())
    assert record["parity"]["passed"]
    ops = {n.op_type for n in onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph.node}
    assert "Gelu" in ops and "FastGelu" not in ops


def test_rotation_is_refused_for_gemma3(variant: Path, tiny_model: Any, tmp_path: Path) -> None:
    assert fused.rotation_refused("gemma3_text") and fused.rotation_refused("llama") is None
    with pytest.raises(UnsupportedError, match="Gemma-3 writes into the residual stream"):
        export(load_source(str(variant)), AVX2, tmp_path / "r", rotate="residual")
    res = run_cli("export", str(tiny_model("gemma3")), "--target", "x86-avx2", "-o", str(tmp_path / "x"),
                  "--rotate", "heads")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "Gemma-3" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()


def test_gemma3_configs_the_writer_refuses_are_named() -> None:
    assert fused.unsupported_reason("gemma3_text", {"hidden_activation": "gelu_pytorch_tanh"}) is None
    assert "bidirectional" in (fused.unsupported_reason("gemma3_text", {"use_bidirectional_attention": True}) or "")
    assert "silu" in (fused.unsupported_reason("gemma3_text", {"hidden_activation": "silu"}) or "")

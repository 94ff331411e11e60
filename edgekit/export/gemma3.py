"""Gemma-3 (text) for the fused writer (edgekit.export.fused): what its decoder does that Llama's does not.

- The embedding is scaled by sqrt(hidden): a Mul after the Gather (the table is usually tied to the lm_head, so
  the scale cannot be folded into it).
- RMSNorm multiplies by (1 + w): (1 + w) is passed as the norm's gain.
- Four norms a layer, two of them on the branch outputs before the residual add:
  h = x + post_attn(attn(input(x))); out = h + post_ff(mlp(pre_ff(h))). The branch-output norms are plain
  SimplifiedLayerNormalization; each "add then norm" (the residual add followed by the next pre-norm) is one
  SkipSimplifiedLayerNormalization, as in the Llama graph.
- q_norm / k_norm over head_dim before the rotary embedding: GroupQueryAttention applies the rotary inside, so q
  and k are split from the packed projection, normed per head and handed over separately.
- Sliding-window layers (config.layer_types) use their own rotary base (rope_local_base_freq) and a window;
  global layers use rope_theta and rope_scaling: two cos/sin tables.
- gelu (tanh approximation) on the gate; the attention scale is query_pre_attn_scalar ** -0.5; the final logits
  are soft-capped (tanh) when final_logit_softcapping is set.

transformers 4.57's Gemma-3 attention never applies attn_logit_softcapping (it is not passed to the attention
function), so neither does this graph: parity is against that PyTorch model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers.models.gemma3.modeling_gemma3 import (
        Gemma3Attention,
        Gemma3DecoderLayer,
        Gemma3ForCausalLM,
        Gemma3RMSNorm,
    )

    from edgekit.export.fused import Shape, _Writer
    from edgekit.export.stream import Spool

MODEL_TYPE = "gemma3_text"
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")
# Why a rotation (edgekit.export.rotation) cannot be folded into this architecture.
NO_ROTATION = ("Gemma-3 writes into the residual stream through RMSNorms (post-attention, post-feedforward), "
               "which an orthogonal rotation of that stream does not pass through")


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """What of this Gemma-3 config the fused writer cannot write (None: all of it)."""
    act = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in GELU_TANH:
        return f"Gemma-3 activation {act}"
    if config.get("use_bidirectional_attention"):
        return "Gemma-3 bidirectional attention"
    rope = config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return f"rope scaling '{rope.get('rope_type', rope.get('type'))}' (position-dependent tables)"
    return None


def write_body(w: _Writer, model: Gemma3ForCausalLM, shape: Shape, spool: Spool, opset: int) -> None:
    """Embedding → layers → final norm → lm_head → "logits", after the writer's inputs."""
    from edgekit.export.fused import _keep_last_positions, _np, _rotary_tables

    cfg = model.config
    table = w.init("model.embed_tokens.weight", _np(model.model.embed_tokens.weight))
    gathered = w.node("Gather", [table, "input_ids"], "/model/embed_tokens/Gather")
    scale = w.const("embed_scale", np.asarray(float(model.model.embed_tokens.embed_scale), dtype=np.float32))
    residual = w.node("Mul", [gathered, scale], "/model/embed_tokens/scale")
    for kind, rotary in (("", model.model.rotary_emb), ("_local", model.model.rotary_emb_local)):
        cos, sin = _rotary_tables(rotary, shape)
        w.init_named(f"cos_cache{kind}", cos)
        w.init_named(f"sin_cache{kind}", sin)
    pending: str | None = None
    for i, layer in enumerate(model.model.layers):
        sliding = cfg.layer_types[i] == "sliding_attention"
        # local_window_size = sliding_window is what matches transformers' sliding mask, measured on prompts
        # 5x the window in prefill and decode (tests/export/test_gemma3.py); sliding_window - 1 does not.
        window = int(cfg.sliding_window) if sliding else -1
        residual, pending = _write_layer(w, layer, i, shape, residual, pending, window, opset)
        spool.take(w.inits)
    normed = w.skip_norm(residual, pending, _gain(model.model.norm), "/model/norm", shape.eps)[0]
    normed = _keep_last_positions(w, normed)
    lm_head = w.init("lm_head.weight", _np(model.lm_head.weight).T)
    cap = cfg.final_logit_softcapping
    if not cap:
        w.node("MatMul", [normed, lm_head], "/lm_head", out="logits")
        return
    logits = w.node("MatMul", [normed, lm_head], "/lm_head")
    cap_c = w.const("final_logit_softcap", np.asarray(float(cap), dtype=np.float32))
    capped = w.node("Tanh", [w.node("Div", [logits, cap_c], "/softcap/Div")], "/softcap/Tanh")
    w.node("Mul", [capped, cap_c], "/softcap/Mul", out="logits")


def _gain(norm: Gemma3RMSNorm) -> np.ndarray:
    from edgekit.export.fused import _np

    return 1.0 + _np(norm.weight)


def _write_layer(w: _Writer, layer: Gemma3DecoderLayer, i: int, s: Shape, residual: str, pending: str | None, window: int,
                 opset: int) -> tuple[str, str]:
    from edgekit.export.fused import MS, _bias, _np

    p = f"/model/layers.{i}"
    attn, mlp = layer.self_attn, layer.mlp
    if pending is None:
        x = w.node("SimplifiedLayerNormalization", [residual, w.init(f"{p}.input_layernorm.weight", _gain(layer.input_layernorm))],
                   f"{p}/input_layernorm", epsilon=s.eps, axis=-1, stash_type=1)
    else:
        x, residual = w.skip_norm(residual, pending, _gain(layer.input_layernorm), f"{p}/input_layernorm", s.eps)
    q, k, v = _qkv(w, attn, x, s, p)
    local = "_local" if window > 0 else ""
    gqa_in = [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
              "total_sequence_length", f"cos_cache{local}", f"sin_cache{local}"]
    out = w.node("GroupQueryAttention", gqa_in, f"{p}/attn/GroupQueryAttention", domain=MS,
                 extra_out=[f"present.{i}.key", f"present.{i}.value"], num_heads=s.heads, kv_num_heads=s.kv_heads,
                 scale=float(attn.scaling), local_window_size=window, do_rotary=1, rotary_interleaved=0)
    o = w.linear(out, _np(attn.o_proj.weight).T, _bias(attn.o_proj), f"{p}/attn/o_proj")
    o = _norm(w, o, _gain(layer.post_attention_layernorm), f"{p}/post_attention_layernorm", s.eps)
    x2, residual = w.skip_norm(residual, o, _gain(layer.pre_feedforward_layernorm), f"{p}/pre_feedforward_layernorm", s.eps)
    gate = w.linear(x2, _np(mlp.gate_proj.weight).T, _bias(mlp.gate_proj), f"{p}/mlp/gate_proj")
    up = w.linear(x2, _np(mlp.up_proj.weight).T, _bias(mlp.up_proj), f"{p}/mlp/up_proj")
    if opset >= 20:
        act = w.node("Gelu", [gate], f"{p}/mlp/act", approximate="tanh")
    else:  # onnx's Gelu has no tanh form before opset 20; onnxruntime's FastGelu is that form
        act = w.node("FastGelu", [gate], f"{p}/mlp/act", domain=MS)
    down = w.linear(w.node("Mul", [act, up], f"{p}/mlp/Mul"), _np(mlp.down_proj.weight).T, _bias(mlp.down_proj),
                    f"{p}/mlp/down_proj")
    return residual, _norm(w, down, _gain(layer.post_feedforward_layernorm), f"{p}/post_feedforward_layernorm", s.eps)


def _qkv(w: _Writer, attn: Gemma3Attention, x: str, s: Shape, p: str) -> tuple[str, str, str]:
    """One packed q/k/v MatMul, split; q and k RMS-normed per head ([.., heads, head_dim]) before GQA's rotary."""
    from edgekit.export.fused import _np

    weights = [_np(getattr(attn, n).weight) for n in ("q_proj", "k_proj", "v_proj")]
    biases = [getattr(attn, n).bias for n in ("q_proj", "k_proj", "v_proj")]
    qkv_b = np.concatenate([_np(b) for b in biases]) if all(b is not None for b in biases) else None
    qkv = w.linear(x, np.concatenate(weights).T, qkv_b, f"{p}/attn/qkv_proj")
    sizes = w.const(f"qkv_split_{s.heads}_{s.kv_heads}_{s.head_dim}",
                    np.asarray([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dtype=np.int64))
    q, k, v = f"{p}/attn/Split/output_0", f"{p}/attn/Split/output_1", f"{p}/attn/Split/output_2"
    w.node("Split", [qkv, sizes], f"{p}/attn/Split", out=q, extra_out=[k, v], axis=-1)
    heads = w.const(f"heads{s.head_dim}", np.asarray([0, 0, -1, s.head_dim], dtype=np.int64))
    flat = w.const("flat3", np.asarray([0, 0, -1], dtype=np.int64))
    normed = []
    for name, t, norm in (("q", q, attn.q_norm), ("k", k, attn.k_norm)):
        split = w.node("Reshape", [t, heads], f"{p}/attn/{name}_norm/Reshape")
        n = _norm(w, split, _gain(norm), f"{p}/attn/{name}_norm", s.eps)
        normed.append(w.node("Reshape", [n, flat], f"{p}/attn/{name}_norm/Flatten"))
    return normed[0], normed[1], v


def _norm(w: _Writer, x: str, gain: np.ndarray, name: str, eps: float) -> str:
    return w.node("SimplifiedLayerNormalization", [x, w.init(f"{name}.weight", gain)], name, epsilon=eps, axis=-1,
                  stash_type=1)


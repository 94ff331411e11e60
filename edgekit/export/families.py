"""Family specifics for the fused writer (edgekit.export.fused): where each decoder keeps its projections, which
layers attend through a sliding window, and what a family's config asks for that the fused graph cannot express.

Phi-3 stores attention's projections already packed (qkv_proj: q rows, then k, then v, as GroupQueryAttention
takes them) and the MLP's gate and up as one gate_up_proj (first half gate, second half up); Llama, Mistral and
Qwen2 keep them apart. Sliding windows: Mistral and Phi-3 slide every layer when `sliding_window` is set; Qwen2
names its sliding layers in `layer_types` (transformers 4.57 derives it from use_sliding_window and
max_window_layers: layers from max_window_layers on slide).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Model types whose packed projections this module reads (the rest: q/k/v_proj, gate/up_proj).
PACKED = ("phi3",)
# Model types whose attention slides only in the layers config.layer_types names "sliding_attention".
LAYER_TYPED = ("qwen2",)


def _np(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def reason(model_type: str, config: dict[str, Any]) -> str | None:
    """A family's config the fused graph cannot express (None when it can)."""
    if model_type == "phi3":
        rope = config.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type"))
        if kind is not None and kind != "default":
            # longrope (su/yarn): short or long factors picked by the sequence length, i.e. two tables.
            return f"Phi-3 rope scaling '{kind}' (tables that change with the sequence length)"
    return None


def qkv(attn: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The packed [in, q+k+v] weight GroupQueryAttention's packed input wants, and its bias (or None)."""
    if hasattr(attn, "qkv_proj"):
        bias = attn.qkv_proj.bias
        return _np(attn.qkv_proj.weight).T, None if bias is None else _np(bias)
    weight = np.concatenate([_np(attn.q_proj.weight), _np(attn.k_proj.weight), _np(attn.v_proj.weight)]).T
    biases = [getattr(attn, n).bias for n in ("q_proj", "k_proj", "v_proj")]
    return weight, np.concatenate([_np(b) for b in biases]) if all(b is not None for b in biases) else None


def gate_up(w: Any, x: str, mlp: Any, p: str) -> tuple[str, str]:
    """Write the MLP's gate and up projections of `x`; (gate, up) outputs.

    Phi-3's gate_up_proj stays one MatMul of 2·I columns and a Split: after int4-rtn that decoded 4-10 % faster
    than two MatMuls of the sliced weight (1 thread, AVX-512; benchmarks/phi3_fused.py) — one MatMulNBits, so one
    quantization of the activations to int8, not two. The quantizers need no names: it is a MatMul like any other."""
    if not hasattr(mlp, "gate_up_proj"):
        return (w.linear(x, _np(mlp.gate_proj.weight).T, _bias(mlp.gate_proj), f"{p}/mlp/gate_proj"),
                w.linear(x, _np(mlp.up_proj.weight).T, _bias(mlp.up_proj), f"{p}/mlp/up_proj"))
    half = int(mlp.gate_up_proj.weight.shape[0]) // 2
    joined = w.linear(x, _np(mlp.gate_up_proj.weight).T, _bias(mlp.gate_up_proj), f"{p}/mlp/gate_up_proj")
    name = f"{p}/mlp/gate_up_proj/Split"
    halves = w.const(f"halves{half}", np.asarray([half, half], dtype=np.int64))
    w.node("Split", [joined, halves], name, out=f"{name}/output_0", extra_out=[f"{name}/output_1"], axis=-1)
    return f"{name}/output_0", f"{name}/output_1"


def _bias(linear: Any) -> np.ndarray | None:
    return None if linear.bias is None else _np(linear.bias)


def window_sizes(cfg: Any) -> tuple[int, ...]:
    """GroupQueryAttention's local_window_size per layer (-1: full attention): the config's sliding_window as is.

    transformers 4.57 keeps keys with kv > q - sliding_window; onnxruntime 1.32's CPU kernel with the same number
    matched it in parity on prompts 10x the window (tests/export/test_fused.py), where sliding_window - 1 did not."""
    layers = int(cfg.num_hidden_layers)
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    if not window:
        return (-1,) * layers
    # Mistral's and Phi-3's attention read config.sliding_window in every layer, whatever layer_types says.
    kinds = cfg.layer_types if cfg.model_type in LAYER_TYPED else ["sliding_attention"] * layers
    return tuple(int(window) if kind == "sliding_attention" else -1 for kind in kinds)

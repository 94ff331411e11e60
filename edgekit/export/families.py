"""Family specifics for the fused writer (edgekit.export.fused): where each decoder keeps its projections, which
layers attend through a sliding window, and what a family's config asks for that the fused graph cannot express.

Phi-3 stores attention's projections already packed (qkv_proj: q rows, then k, then v, as GroupQueryAttention
takes them) and the MLP's gate and up as one gate_up_proj (first half gate, second half up); Llama, Mistral and
Qwen2 keep them apart. Sliding windows: Mistral and Phi-3 slide every layer when `sliding_window` is set; Qwen2
names its sliding layers in `layer_types` (transformers 4.57 derives it from use_sliding_window and
max_window_layers: layers from max_window_layers on slide).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module
    from transformers import PretrainedConfig

    from edgekit.export.fused import _Writer

# Model types whose attention slides only in the layers config.layer_types names "sliding_attention".
LAYER_TYPED = ("qwen2",)


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.detach().float().cpu().numpy())


def _weight(linear: Module) -> np.ndarray:
    """A Linear's weight as [in, out] (PyTorch keeps [out, in])."""
    out: np.ndarray = np.ascontiguousarray(linear.get_parameter("weight").detach().float().cpu().numpy().T)
    return out


def reason(model_type: str, config: dict[str, Any]) -> str | None:
    """A family's config the fused graph cannot express (None when it can)."""
    if model_type == "phi3":
        rope = config.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type"))
        if kind is not None and kind != "default":
            # longrope (su/yarn): short or long factors picked by the sequence length, i.e. two tables.
            return f"Phi-3 rope scaling '{kind}' (tables that change with the sequence length)"
    return None


def qkv(attn: Module) -> tuple[np.ndarray, np.ndarray | None]:
    """The packed [in, q+k+v] weight GroupQueryAttention's packed input wants, and its bias (or None)."""
    packed = getattr(attn, "qkv_proj", None)
    if packed is not None:
        return _weight(packed), _np(packed.bias)
    projs = [getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")]
    biases = [b for p in projs if (b := _np(p.bias)) is not None]
    bias = np.concatenate(biases) if len(biases) == len(projs) else None
    return np.concatenate([_weight(p) for p in projs], axis=1), bias


def gate_up(w: _Writer, x: str, mlp: Module, p: str) -> tuple[str, str]:
    """Write the MLP's gate and up projections of `x`; (gate, up) outputs.

    One MatMul of 2·I columns and a Split: Phi-3's gate_up_proj as is, Llama/Mistral/Qwen2's gate and up weights
    joined (bias-free ones). After int4-rtn that decoded 3-8 % faster than two MatMuls on Phi-3 proportions
    (benchmarks/phi3_fused.py) and 1.07x (int4-rtn) / 1.03x (int8-weight) on SmolLM2 (paired rounds, 1 thread,
    AVX-512) — one MatMulNBits, so one quantization of the activations to int8, not two. Blocks run along the input
    axis, so each output column quantizes exactly as it would alone."""
    packed = getattr(mlp, "gate_up_proj", None)
    if packed is None:
        gate, up = (getattr(mlp, n) for n in ("gate_proj", "up_proj"))
        if gate.bias is not None or up.bias is not None:
            return (w.linear(x, _weight(gate), _np(gate.bias), f"{p}/mlp/gate_proj"),
                    w.linear(x, _weight(up), _np(up.bias), f"{p}/mlp/up_proj"))
        half = int(gate.weight.shape[0])
        joined = w.linear(x, np.concatenate([_weight(gate), _weight(up)], axis=1), None, f"{p}/mlp/gate_up_proj")
    else:
        half = int(packed.weight.shape[0]) // 2
        joined = w.linear(x, _weight(packed), _np(packed.bias), f"{p}/mlp/gate_up_proj")
    name = f"{p}/mlp/gate_up_proj/Split"
    halves = w.const(f"halves{half}", np.asarray([half, half], dtype=np.int64))
    w.node("Split", [joined, halves], name, out=f"{name}/output_0", extra_out=[f"{name}/output_1"], axis=-1)
    return f"{name}/output_0", f"{name}/output_1"


def window_sizes(cfg: PretrainedConfig) -> tuple[int, ...]:
    """GroupQueryAttention's local_window_size per layer (-1: full attention): the config's sliding_window as is.

    transformers 4.57 keeps keys with kv > q - sliding_window; onnxruntime 1.32's CPU kernel with the same number
    matched it in parity on prompts 10x the window (tests/export/test_fused.py), where sliding_window - 1 did not."""
    layers, kind = int(cfg.num_hidden_layers), cfg.model_type
    window = getattr(cfg, "sliding_window", None)
    if kind == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    if not window:
        return (-1,) * layers
    # Mistral's and Phi-3's attention read config.sliding_window in every layer, whatever layer_types says.
    kinds = getattr(cfg, "layer_types", None) if kind in LAYER_TYPED else None
    return tuple(int(window) if k == "sliding_attention" else -1 for k in kinds or ["sliding_attention"] * layers)

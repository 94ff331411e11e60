"""A small explicit ONNX writer for Llama-family decoders with onnxruntime's fused operators.

optimum's export traces PyTorch, so every layer arrives as rotary maths, causal-mask plumbing and KV
concatenation spelled out in ~100 small ops (3,153 nodes per SmolLM2 step); dispatching them costs more than
the weight reads of an int4 model. This writer emits the graph onnxruntime-genai's model builder emits
instead — GroupQueryAttention with the rotary embedding inside, SkipSimplifiedLayerNormalization, one packed
QKV MatMul — about ten nodes a layer, from the PyTorch module's own weights and rotary tables. Inputs and
outputs keep optimum's decoder-with-past names (input_ids, attention_mask, past_key_values.N.key/value →
logits, present.N.key/value) so everything downstream (quantizers, runtime, bench) is unchanged; parity
against PyTorch is checked like any export.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import UnsupportedError
from edgekit.export import families, gemma3

if TYPE_CHECKING:
    from torch import Tensor

    from edgekit.export import rotation, stream
    from edgekit.specs import RotateSettings

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral", "qwen2", "phi3", gemma3.MODEL_TYPE)
MS = "com.microsoft"
# Graph input ([1] int64, 0 = every position): how many last positions get logits; see _keep_last_positions.
LOGITS_TO_KEEP = "num_logits_to_keep"  # = edgekit.runtime.LOGITS_TO_KEEP
# Rotary tables cover this many positions at most; longer contexts are refused by GroupQueryAttention.
MAX_ROTARY_POSITIONS = 32768
RAW_TENSOR_BYTES = 1 << 20  # from this size an initializer is serialized from its array (edgekit.export.stream)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    windows: tuple[int, ...]  # GroupQueryAttention's local_window_size per layer (-1: full)
    positions: int
    rotary_dim: int


def unsupported_reason(model_type: str, config: dict[str, Any]) -> str | None:
    """Why the fused writer cannot write this model (None when it can)."""
    if model_type not in SUPPORTED:
        return f"architecture {model_type} (fused writer covers {', '.join(SUPPORTED)})"
    if model_type == gemma3.MODEL_TYPE:  # its own module: edgekit.export.gemma3
        return gemma3.unsupported_reason(config)
    if config.get("hidden_act", "silu") != "silu":
        return f"activation {config.get('hidden_act')}"
    if family := families.reason(model_type, config):
        return family
    rope = config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return f"rope scaling '{rope.get('rope_type', rope.get('type'))}' (position-dependent tables)"
    return None


def rotation_refused(model_type: str) -> str | None:
    """Why edgekit.export.rotation cannot rotate this architecture (None: it can)."""
    if model_type == gemma3.MODEL_TYPE:
        return gemma3.NO_ROTATION
    return None


def write(model: Any, out_file: Path, *, opset: int, rotate: RotateSettings | None = None,
          consume: bool = False) -> dict[str, Any]:
    """Write `model` (a transformers *ForCausalLM in fp32) as a fused ONNX graph at `out_file`; `consume`: the
    caller no longer needs `model`, so a rotation may change it in place instead of copying it, and each layer's
    weights are freed once written."""
    import onnx

    from edgekit.export import rotation, stream

    reason = unsupported_reason(model.config.model_type, model.config.to_dict())
    if reason:
        raise UnsupportedError(f"the fused writer does not support {reason}; use --graph optimum")
    shape = _shape(model.config)
    w = _Writer()
    spool = stream.Spool(out_file.parent)  # tensors go to disk layer by layer, not all held to the end
    plan = None
    if rotate is not None and rotate.mode != "off":
        refused = rotation_refused(model.config.model_type)
        if refused:
            raise UnsupportedError(f"--rotate {rotate.mode}: {refused}; use --rotate off")
        model, plan = rotation.apply(model, rotate, in_place=consume)
        w.down_hadamard = plan.down_hadamard
    _write_inputs(w, shape)
    if model.config.model_type == gemma3.MODEL_TYPE:
        gemma3.write_body(w, model, shape, spool, opset)
    else:
        _write_body(w, model, shape, spool, plan, consume)
    graph = onnx.helper.make_graph(w.nodes, "edgekit-fused-decoder", w.inputs, w.outputs)  # initializers: below
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(MS, 1)],
                                   producer_name="edgekit")
    onnx.helper.set_model_props(proto, {"edgekit.kv_cache": "shared-buffer"})  # see edgekit.runtime._SharedCache
    total = spool.nbytes + sum(t.ByteSize() for t in w.inits)
    if total > 1_500_000_000:  # onnx writes external data from a whole ModelProto: read the spool back
        proto.graph.initializer.extend(spool.read_all() + [t.proto() if isinstance(t, stream.RawTensor) else t
                                                            for t in w.inits])
        w.inits.clear()
        onnx.save_model(proto, str(out_file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out_file.name + ".data", size_threshold=1024)
    else:  # one tensor in memory at a time, not four copies of all (edgekit.export.stream)
        stream.save(proto, w.inits, out_file, spool)
    log.info("fused writer: %d layers, %d nodes", shape.layers, len(w.nodes))
    return {"writer": "edgekit.fused", "nodes": len(w.nodes), "layers": shape.layers,
            "attention": "GroupQueryAttention (rotary inside)", "rotary_positions": shape.positions,
            **({"rotation": plan.info} if plan is not None else {})}


def _write_body(w: _Writer, model: Any, shape: Shape, spool: stream.Spool, plan: rotation.Plan | None,
                consume: bool) -> None:
    """Embedding → layers → final norm → lm_head → "logits" of a Llama-family decoder, after the inputs;
    `consume`: each layer's weights are freed once written."""
    from edgekit.export import rotation

    hidden = w.node("Gather", [w.init("model.embed_tokens.weight", _np(model.model.embed_tokens.weight)), "input_ids"],
                    "/model/embed_tokens")
    cos, sin = _rotary_tables(model.model.rotary_emb, shape)
    w.init_named("cos_cache", cos)
    w.init_named("sin_cache", sin)
    residual, pending = hidden, None
    for i, layer in enumerate(model.model.layers):
        residual, pending = _write_layer(w, layer, i, shape, residual, pending)
        spool.take(w.inits)
        if consume:
            _free(layer)
    if consume and model.lm_head.weight is not model.model.embed_tokens.weight:
        _free(model.model.embed_tokens)
    normed = w.skip_norm(residual, pending, _np(model.model.norm.weight), "/model/norm", shape.eps)[0]
    normed = _keep_last_positions(w, normed)
    if plan is not None and plan.head_matrix is not None:
        normed = w.linear(normed, plan.head_matrix, None, f"/model{rotation.ROTATE_MARK}norm_gain")
    lm_head = _np(model.lm_head.weight).T
    w.node("MatMul", [normed, w.init("lm_head.weight", lm_head)], "/lm_head", out="logits")


def _free(module: Any) -> None:
    """Drop a written module's weights: the model shrinks as the file grows, instead of both held to the end."""
    import torch

    from edgekit.util import trim_heap

    for p in module.parameters():
        p.data = torch.empty(0, dtype=p.dtype)
    trim_heap()


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _shape(cfg: Any) -> Shape:
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return Shape(
        layers=int(cfg.num_hidden_layers), hidden=int(cfg.hidden_size), heads=heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads), head_dim=head_dim,
        vocab=int(cfg.vocab_size), eps=float(cfg.rms_norm_eps), windows=families.window_sizes(cfg),
        positions=min(int(cfg.max_position_embeddings), MAX_ROTARY_POSITIONS),
        rotary_dim=int(head_dim * float(getattr(cfg, "partial_rotary_factor", None) or 1.0)),
    )


def _rotary_tables(rotary: Any, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, rotary_dim/2] from the model's own rotary module (so rope scaling is honoured); a
    partial rotary (Phi-3's partial_rotary_factor) gives narrower tables, and GroupQueryAttention rotates that many
    leading dims of each head."""
    import torch

    pos = torch.arange(shape.positions, dtype=torch.int64)[None, :]
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
    half = shape.rotary_dim // 2
    if cos.shape[-1] != shape.rotary_dim:
        raise UnsupportedError(f"rotary tables of width {cos.shape[-1]}, expected {shape.rotary_dim}")
    if half % 8:  # onnxruntime 1.32 refuses the node at run time otherwise
        raise UnsupportedError(f"a rotary width of {shape.rotary_dim} (GroupQueryAttention wants a multiple of 16)")
    return _np(cos[0, :, :half]), _np(sin[0, :, :half])


def _write_inputs(w: _Writer, s: Shape) -> None:
    from onnx import TensorProto
    from onnx.helper import make_tensor_value_info as vi

    w.inputs += [vi("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                 vi("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    kv: list[str | int] = ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]
    present: list[str | int] = ["batch_size", s.kv_heads, "total_sequence_length", s.head_dim]
    for i in range(s.layers):
        for kind in ("key", "value"):
            w.inputs.append(vi(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv))
    w.outputs.append(vi("logits", TensorProto.FLOAT, ["batch_size", "logits_length", s.vocab]))
    for i in range(s.layers):
        for kind in ("key", "value"):
            w.outputs.append(vi(f"present.{i}.{kind}", TensorProto.FLOAT, present))
    # GroupQueryAttention wants int32 lengths: seqlens_k = tokens seen - 1 per row, and the total length.
    one = w.const("one_i64", np.asarray([1], dtype=np.int64))
    summed = w.node("ReduceSum", ["attention_mask", one], "/mask/ReduceSum", keepdims=0)
    w.node("Cast", [w.node("Sub", [summed, one], "/mask/Sub")], "/mask/seqlens_k", out="seqlens_k", to=TensorProto.INT32)
    length = w.node("Gather", [w.node("Shape", ["attention_mask"], "/mask/Shape"), w.const("idx1", np.asarray(1, dtype=np.int64))],
                    "/mask/Gather", axis=0)
    w.node("Cast", [length], "/mask/total_len", out="total_sequence_length", to=TensorProto.INT32)


def _keep_last_positions(w: _Writer, hidden: str) -> str:
    """Slice the positions the lm_head sees to the last `num_logits_to_keep` ([1] int64; 0 = all positions).

    Generation needs the next-token logits of the last position only, and the lm_head (hidden × vocab, the
    largest MatMul) over every prompt position was ~a fifth of SmolLM2's prefill FLOPs. An input with a default
    of 0 (an overridable initializer), because onnxruntime-genai knows no such input and pre-allocates logits for
    every prompt position. edgekit's generation feeds 1 for the prefill (through plain feeds: IO binding cannot
    override an initializer); a decode step has one position either way."""
    from onnx import TensorProto
    from onnx.helper import make_tensor_value_info as vi

    w.inputs.append(vi(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    w.init_named(LOGITS_TO_KEEP, np.zeros(1, dtype=np.int64))
    starts = w.node("Neg", [LOGITS_TO_KEEP], "/logits_to_keep/Neg")
    ends = w.const("i64_max", np.asarray([np.iinfo(np.int64).max], dtype=np.int64))
    return w.node("Slice", [hidden, starts, ends, w.const("axis1", np.asarray([1], dtype=np.int64))], "/logits_to_keep/Slice")


def _write_layer(w: _Writer, layer: Any, i: int, s: Shape, residual: str, pending: str | None) -> tuple[str, str]:
    p = f"/model/layers.{i}"
    attn, mlp = layer.self_attn, layer.mlp
    norm_w = _np(layer.input_layernorm.weight)
    if pending is None:
        x = w.node("SimplifiedLayerNormalization", [residual, w.init(f"{p}.input_layernorm.weight", norm_w)],
                   f"{p}/input_layernorm", epsilon=s.eps, axis=-1, stash_type=1)
    else:
        x, residual = w.skip_norm(residual, pending, norm_w, f"{p}/input_layernorm", s.eps)
    qkv = w.linear(x, *families.qkv(attn), f"{p}/attn/qkv_proj")
    gqa_in = [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
              "total_sequence_length", "cos_cache", "sin_cache"]
    out = w.node("GroupQueryAttention", gqa_in, f"{p}/attn/GroupQueryAttention", domain=MS,
                 extra_out=[f"present.{i}.key", f"present.{i}.value"], num_heads=s.heads, kv_num_heads=s.kv_heads,
                 scale=float(s.head_dim ** -0.5), local_window_size=s.windows[i], do_rotary=1, rotary_interleaved=0)
    o = w.linear(out, _np(attn.o_proj.weight).T, _bias(attn.o_proj), f"{p}/attn/o_proj")
    x2, residual = w.skip_norm(residual, o, _np(layer.post_attention_layernorm.weight), f"{p}/post_attention_layernorm", s.eps)
    gate, up = families.gate_up(w, x2, mlp, p)
    act = w.node("Mul", [gate, w.node("Sigmoid", [gate], f"{p}/mlp/act/Sigmoid")], f"{p}/mlp/act/Mul")
    down_in = w.node("Mul", [act, up], f"{p}/mlp/Mul")
    if w.down_hadamard is not None:
        down_in = w.block_hadamard(down_in, *w.down_hadamard, f"{p}/mlp/rotate/hadamard")
    down = w.linear(down_in, _np(mlp.down_proj.weight).T, _bias(mlp.down_proj), f"{p}/mlp/down_proj")
    return residual, down


def _bias(linear: Any) -> np.ndarray | None:
    return None if linear.bias is None else _np(linear.bias)


class _Writer:
    """Accumulates nodes and initializers; every node output is named after its node."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        # Not looked up in `inits`: the writer spools those to disk after each layer (edgekit.export.stream).
        self.const_names: set[str] = set()
        # (left [m, m] or None, right [B, B]): online before down_proj (edgekit.export.rotation)
        self.down_hadamard: tuple[np.ndarray | None, np.ndarray] | None = None

    def init_named(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        from edgekit.export import stream

        big = array.nbytes >= RAW_TENSOR_BYTES and sys.byteorder == "little"  # raw_data is little-endian
        self.inits.append(stream.RawTensor(name, array) if big else numpy_helper.from_array(array, name))
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        return self.init_named(name.strip("/").replace("/", "."), array)

    def const(self, name: str, array: np.ndarray) -> str:
        full = f"/const/{name}"
        if full in self.const_names:  # shared by every layer that asks for it
            return full
        self.const_names.add(full)
        return self.init_named(full, array)

    def node(self, op: str, inputs: list[str], name: str, *, out: str | None = None, domain: str = "",
             extra_out: list[str] | None = None, **attrs: Any) -> str:
        from onnx import helper

        output = out or f"{name}/output_0"
        self.nodes.append(helper.make_node(op, inputs, [output, *(extra_out or [])], name=name, domain=domain or None, **attrs))
        return output

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        y = self.node("MatMul", [x, self.init(f"{name}.weight", weight)], f"{name}/MatMul")
        return y if bias is None else self.node("Add", [y, self.init(f"{name}.bias", bias)], f"{name}/Add")

    def skip_norm(self, residual: str, delta: str | None, weight: np.ndarray, name: str, eps: float) -> tuple[str, str]:
        """(normed, residual + delta) through one SkipSimplifiedLayerNormalization."""
        from onnx import helper

        normed, summed = f"{name}/output_0", f"{name}/output_3"
        inputs = [residual, delta or "", self.init(f"{name}.weight", weight)]
        self.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", inputs, [normed, "", "", summed],
                                           name=name, domain=MS, epsilon=eps))
        return normed, summed

    def block_hadamard(self, x: str, left: np.ndarray | None, right: np.ndarray, name: str) -> str:
        """x [batch, seq, m·B] as [.., m, B] → (left ·) x · right: float MatMuls of B (and m) columns, not m·B."""
        b = right.shape[0]
        blocks = self.node("Reshape", [x, self.const(f"blocks{b}", np.asarray([0, 0, -1, b], dtype=np.int64))],
                           f"{name}/Reshape")
        mixed = self.node("MatMul", [blocks, self.init(f"{name}.weight", right)], f"{name}/MatMul")
        if left is not None:
            mixed = self.node("MatMul", [self.init(f"{name}.left", left), mixed], f"{name}/MatMulLeft")
        return self.node("Reshape", [mixed, self.const("flat3", np.asarray([0, 0, -1], dtype=np.int64))],
                         f"{name}/Flatten")

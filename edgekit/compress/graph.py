"""Reading and preparing ONNX graphs for quantization: which nodes carry weights, which are the lm_head and
the token embedding, and what a quantizer actually changed (we report what happened, not what was asked).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto

log = logging.getLogger(__name__)

QUANT_OPS = {"MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeMatMul",
             "QuantizeLinear", "DequantizeLinear", "QLinearMatMul"}


@dataclass(frozen=True)
class WeightNode:
    name: str
    op: str
    weight: str
    shape: tuple[int, ...]


def _float_inits(graph: GraphProto) -> dict[str, Any]:
    from onnx import TensorProto

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    return {i.name: i for i in graph.initializer if i.data_type in floats}


def weight_nodes(model: ModelProto, ops: tuple[str, ...] = ("MatMul", "Gemm", "Gather")) -> list[WeightNode]:
    """Nodes of `ops` whose weight is a 2-D float initializer (what weight quantizers can touch)."""
    inits = _float_inits(model.graph)
    out = []
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        idx = 0 if node.op_type == "Gather" else 1
        if len(node.input) > idx and node.input[idx] in inits:
            dims = tuple(int(d) for d in inits[node.input[idx]].dims)
            if len(dims) == 2:
                out.append(WeightNode(node.name, node.op_type, node.input[idx], dims))
    return out


def lm_head(model: ModelProto) -> str | None:
    """The MatMul/Gemm producing the `logits` output (possibly through a reshape or cast)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = {o.name for o in model.graph.output}
    if "logits" not in names:
        return None
    node = producers.get("logits")
    for _ in range(4):
        if node is None:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            return str(node.name)
        node = producers.get(node.input[0])
    return None


def token_embedding(model: ModelProto, vocab_size: int | None) -> str | None:
    """The Gather on the [vocab, hidden] table: the vocabulary-sized one, else the largest float table."""
    gathers = [w for w in weight_nodes(model, ("Gather",))]
    if vocab_size:
        exact = [w for w in gathers if w.shape[0] == vocab_size]
        if exact:
            return exact[0].name
    return max(gathers, key=lambda w: w.shape[0] * w.shape[1]).name if gathers else None


def ensure_names(model: ModelProto) -> None:
    """Quantizers select nodes by name: give unnamed nodes stable names."""
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if not node.name:
            counts[node.op_type] += 1
            node.name = f"{node.op_type}_edgekit_{counts[node.op_type]}"


def gemm_to_matmul(model: ModelProto) -> list[str]:
    """Rewrite plain Gemm(A, B[, C]) with a constant B as MatMul (+ Add): MatMulNBits only matches MatMul.

    GPT-2's Conv1D layers export as Gemm; without this the weight-only quantizers silently skip them.
    Only alpha=beta=1, transA=0 Gemms are rewritten (a transposed B is transposed once, offline).
    """
    from onnx import helper, numpy_helper

    inits = _float_inits(model.graph)
    new_nodes, changed = [], []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        if attrs.get("transB", 0):
            weight = inits[node.input[1]]
            arr = numpy_helper.to_array(weight).T.copy()
            weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_edgekit_mm" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        changed.append(node.name)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return changed


def match(name: str, patterns: tuple[str, ...] | list[str] | set[str]) -> bool:
    return any(p == name or p in name for p in patterns)


def op_counts(model: ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def block_error(weight: np.ndarray, bits: int, block: int) -> float:
    """Relative error ||W - Q(W)|| / ||W|| of an asymmetric block-wise round-to-nearest of W along its input axis.

    Only a cheap sensitivity ranking for `--max-top1-drop`; the shipped weights come from onnxruntime.
    """
    w = np.asarray(weight, dtype=np.float32)
    k = w.shape[0]
    pad = (-k) % block
    if pad:
        w = np.concatenate([w, np.zeros((pad, w.shape[1]), np.float32)])
    blocks = w.reshape(-1, block, w.shape[1])
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    scale = np.maximum(hi - lo, 1e-12) / (2**bits - 1)
    q = np.round((blocks - lo) / scale) * scale + lo
    norm = float(np.linalg.norm(blocks))
    return float(np.linalg.norm(q - blocks)) / max(norm, 1e-12)


def sensitivity(model: ModelProto, names: list[str], bits: int, block: int) -> dict[str, float]:
    """Quantization error per node, scaled by weight size so big projections rank ahead of tiny ones."""
    from onnx import numpy_helper

    inits = _float_inits(model.graph)
    by_name = {w.name: w for w in weight_nodes(model, ("MatMul",))}
    out = {}
    for name in names:
        node = by_name.get(name)
        if node is not None:
            arr = numpy_helper.to_array(inits[node.weight])
            out[name] = block_error(arr, bits, block) * float(np.sqrt(arr.shape[0]))
    return out

"""Run MatMulNBits with float zero points (HQQ's output) on onnxruntime's fast integer kernels.

HQQ stores w = (q - z) · s with a float z per block. onnxruntime's CPU kernels only have fast paths for
integer zero points; with float ones MatMulNBits dequantizes the whole matrix every call (297 ms/step on
SmolLM2, 20× slower than RTN). The identity

    (q - z) · s  =  (q - 8) · s  +  (8 - z) · s

splits each weight into a symmetric 4-bit part, which the fast kernel runs, and an offset m = (8 - z) · s that
is constant within a block of `block_size` inputs. For an input row x, x · M equals (block sums of x) · m, a
matrix `block_size` times smaller than W: one MatMul against a 0/1 block indicator (shared by every node
reading the same x) and one small MatMul per node. Exact up to float rounding; HQQ's fidelity, RTN's speed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

log = logging.getLogger(__name__)


def split_float_offsets(model: ModelProto, accuracy_level: int | None) -> int:
    """Rewrite every MatMulNBits with float zero points in place; returns how many were rewritten."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    block_sums: dict[tuple[str, int, int], str] = {}
    new_nodes: list[Any] = []
    rewritten = 0
    for node in model.graph.node:
        new_nodes.append(node)
        plan = _plan(node, inits)
        if plan is None:
            continue
        k, n, block, bits = plan
        zero = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32).reshape(n, -1)
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1)
        offset = ((2 ** (bits - 1)) - zero) * scale  # [N, blocks]
        key = (node.input[0], k, block)
        if key not in block_sums:
            block_sums[key] = _block_sum_node(model, new_nodes, node.input[0], k, block)
        _attach_correction(model, new_nodes, node, block_sums[key], offset.T.copy(), accuracy_level)
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        from onnxruntime.quantization.onnx_model import ONNXModel

        ONNXModel(model).remove_unused_constant()  # the float zero points nothing reads any more
        log.info("float zero points split into symmetric kernel + block offsets on %d MatMulNBits", rewritten)
    return rewritten


def _plan(node: NodeProto, inits: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(K, N, block, bits) when `node` is a MatMulNBits with a float zero-point initializer over whole blocks."""
    from onnx import TensorProto, helper

    if node.op_type != "MatMulNBits" or len(node.input) < 4 or not node.input[3]:
        return None
    zp = inits.get(node.input[3])
    if zp is None or zp.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return None
    if len(node.input) > 4 and any(node.input[4:]):  # g_idx / bias: leave such nodes alone
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, block, bits = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"]), int(attrs.get("bits", 4))
    if k % block:
        return None
    return k, n, block, bits


def _block_sum_node(model: ModelProto, nodes: list[Any], x: str, k: int, block: int) -> str:
    """x · E with E[k, b] = 1 where k // block == b: the per-block sums of x, shape [..., K / block]."""
    from onnx import helper, numpy_helper

    base = f"{x}/block_sums_{block}".replace("/", "_").strip("_")
    indicator = np.zeros((k, k // block), dtype=np.float32)
    indicator[np.arange(k), np.arange(k) // block] = 1.0
    model.graph.initializer.append(numpy_helper.from_array(indicator, f"{base}_indicator"))
    nodes.append(helper.make_node("MatMul", [x, f"{base}_indicator"], [f"{base}_out"], name=f"{base}_MatMul"))
    return f"{base}_out"


def _attach_correction(model: ModelProto, nodes: list[NodeProto], node: NodeProto, sums: str, offset_t: np.ndarray,
                       accuracy_level: int | None) -> None:
    """Make `node` symmetric (no zero points) and add sums · offset to its output."""
    from onnx import helper, numpy_helper

    out = node.output[0]
    base = node.name or out
    symmetric_out = f"{out}_symmetric"
    del node.input[3:]
    node.output[0] = symmetric_out
    if accuracy_level is not None:
        for attr in list(node.attribute):
            if attr.name == "accuracy_level":
                node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("accuracy_level", int(accuracy_level)))
    model.graph.initializer.append(numpy_helper.from_array(offset_t, f"{base}_block_offsets"))
    nodes.append(helper.make_node("MatMul", [sums, f"{base}_block_offsets"], [f"{out}_offset"], name=f"{base}_offset"))
    nodes.append(helper.make_node("Add", [symmetric_out, f"{out}_offset"], [out], name=f"{base}_add_offset"))


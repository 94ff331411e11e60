"""One quantized table for a tied embedding: the token Gather reads the lm_head MatMulNBits' own blocks.

A tied decoder (SmolLM2, Gemma, Qwen2-0.5B ...) exports its embedding twice — the Gather table and the lm_head
weight, its transpose — and a quantized bundle carried both (SmolLM2 int8: 32 MB of 186). onnxruntime's
GatherBlockQuantized gathers rows from the same uint8 blocks, scales and zero points MatMulNBits multiplies with
(N = vocab rows of K = hidden values, blocks along K), as onnxruntime-genai's builder does with
`shared_embeddings`: a Reshape views B [N, K/block, block·bits/8] as [N, K·bits/8] and one initializer set serves both.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, TensorProto

log = logging.getLogger(__name__)

MS = "com.microsoft"
ROWS_PER_CHUNK = 4096


def _array(init: TensorProto) -> np.ndarray:
    from onnx import numpy_helper

    if init.raw_data:  # one copy of the bytes, no float conversion
        return np.frombuffer(init.raw_data, dtype=np.float32).reshape(tuple(init.dims))
    return numpy_helper.to_array(init)


def is_tied(model: ModelProto, embedding: str | None, lm_head: str | None) -> bool:
    """Whether the embedding Gather's table is exactly the lm_head MatMul's weight, transposed (a tied export)."""
    from onnx import TensorProto

    if not embedding or not lm_head:
        return False
    nodes = {n.name: n for n in model.graph.node}
    gather, head = nodes.get(embedding), nodes.get(lm_head)
    if gather is None or head is None or head.op_type != "MatMul" or len(head.input) < 2:
        return False
    inits = {i.name: i for i in model.graph.initializer}
    table, weight = inits.get(gather.input[0]), inits.get(head.input[1])
    if table is None or weight is None or table.name == weight.name:
        return False
    if table.data_type != TensorProto.FLOAT or weight.data_type != TensorProto.FLOAT:
        return False
    if len(table.dims) != 2 or list(table.dims) != list(reversed(weight.dims)):
        return False
    e, w = _array(table), _array(weight)
    # Chunked: a full transpose compare would hold another vocab × hidden temporary.
    return all(np.array_equal(e[r:r + ROWS_PER_CHUNK], w[:, r:r + ROWS_PER_CHUNK].T)
               for r in range(0, e.shape[0], ROWS_PER_CHUNK))


def _attrs(node: NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def head_node(model: ModelProto, lm_head: str) -> NodeProto | None:
    """The MatMulNBits the quantizer made of the lm_head MatMul (named after it)."""
    return next((n for n in model.graph.node if n.op_type == "MatMulNBits"
                 and n.name in (f"{lm_head}_Q4", f"{lm_head}_Q8", lm_head)), None)


def share(model: ModelProto, embedding: str, lm_head: str) -> int | None:
    """Replace the float embedding Gather by a GatherBlockQuantized over the lm_head's quantized blocks.

    Returns the bits of the shared table, or None (graph unchanged) when the lm_head is not a plain MatMulNBits
    whose blocks GatherBlockQuantized can read (g_idx or bias inputs, a shape that is not [vocab, hidden])."""
    from onnx import helper

    head = head_node(model, lm_head)
    gather = next((n for n in model.graph.node if n.name == embedding and n.op_type == "Gather"), None)
    if head is None or gather is None or any(i for i in head.input[4:]):
        return None
    a = _attrs(head)
    n, k, bits, block = int(a["N"]), int(a["K"]), int(a["bits"]), int(a["block_size"])
    inits = {i.name: i for i in model.graph.initializer}
    table = inits.get(gather.input[0])
    if table is None or list(table.dims) != [n, k] or k % block or int(_attrs(gather).get("axis", 0)) != 0:
        return None
    base, head_in = "/model/embed_tokens/shared", list(head.input)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    views: list[Any] = []
    inputs = [_view(views, dims, head_in[1], [n, k * bits // 8], f"{base}/B"), gather.input[1],
              _view(views, dims, head_in[2], [n, k // block], f"{base}/scales")]
    if len(head_in) > 3 and head_in[3]:
        # MatMulNBits packs 4-bit zero points per row, padded to whole bytes: [N, ceil(blocks·bits/8)].
        inputs.append(_view(views, dims, head_in[3], [n, -(-(k // block) * bits // 8)], f"{base}/zero_points"))
    new = helper.make_node("GatherBlockQuantized", inputs, list(gather.output), name=gather.name + "_shared", domain=MS,
                           gather_axis=0, quantize_axis=1, block_size=block, bits=bits)
    # The Reshapes read initializers only: first in the node list keeps the graph topologically sorted.
    nodes = [node for node, _ in views] + [new if node.name == gather.name else node for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(const for _, const in views)
    if not any(table.name in node.input for node in model.graph.node):
        model.graph.initializer.remove(table)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    log.info("embedding Gather shares the lm_head's %d-bit blocks (%d × %d)", bits, n, k)
    return bits


def _view(views: list[Any], dims: dict[str, list[int]], name: str, shape: list[int], node_name: str) -> str:
    """`name` seen as `shape`: through a Reshape (appended to `views`), since the initializer keeps the shape
    MatMulNBits checks at load time."""
    from onnx import helper, numpy_helper

    if dims.get(name) == shape:
        return name
    const = numpy_helper.from_array(np.asarray(shape, dtype=np.int64), f"{node_name}/shape")
    out = f"{node_name}/output_0"
    views.append((helper.make_node("Reshape", [name, const.name], [out], name=node_name), const))
    return out

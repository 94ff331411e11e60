"""int4-gptq with rows of an odd number of blocks: onnxruntime's packing broke there (edgekit/compress/gptq_zero_points)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

from edgekit.catalog import load_target
from edgekit.compress import compress, method_spec
from edgekit.compress.gptq_zero_points import NEUTRAL, pack_4bit

AVX2 = load_target("x86-avx2")


@pytest.mark.parametrize("blocks", [1, 2, 3, 9])
def test_pack_4bit_puts_each_point_in_its_columns_byte(blocks: int) -> None:
    points = np.random.default_rng(blocks).integers(0, 16, (5, blocks))
    packed = pack_4bit(points.reshape(-1, 1), 5, blocks)
    assert packed.shape == (5, (blocks + 1) // 2) and packed.dtype == np.uint8
    for col in range(5):
        for b in range(blocks):
            assert (int(packed[col, b // 2]) >> (4 * (b % 2))) & 0xF == points[col, b]
        if blocks % 2:
            assert int(packed[col, -1]) >> 4 == NEUTRAL


def _read_back(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The [K, N] weights onnxruntime's MatMulNBits kernel multiplies by: the node alone, applied to the identity."""
    import onnxruntime as ort

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    k, n = int(attrs["K"]), int(attrs["N"])
    inits = [i for i in model.graph.initializer if i.name in set(node.input[1:])]
    single = onnx.helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft",
                                   **{**attrs, "accuracy_level": 0})
    graph = onnx.helper.make_graph([single], "one", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k, k])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [k, n])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"x": np.eye(k, dtype=np.float32)})[0]
    return out


def _float_weights(parent: Any) -> dict[str, np.ndarray]:
    model = onnx.load(str(parent.model_file))
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: onnx.numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits}


def test_gptq_at_an_odd_block_count_quantizes_and_reads_back_near_the_weights(tiny_onnx: Any, tmp_path: Any) -> None:
    parent = tiny_onnx("llama")  # hidden 64 in blocks of 64: one block a row for every MatMul reading the hidden state
    spec = method_spec("int4-gptq", AVX2, block_size=64, scale_dtype="float32")
    out = compress(parent, spec, AVX2, tmp_path / "q", calibration_samples=4)
    model = onnx.load(str(out.model_file))
    weights = _float_weights(parent)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"
             and onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits")) == 4]
    odd = [n for n in nodes if -(-int(next(a.i for a in n.attribute if a.name == "K")) // 64) % 2]
    assert odd and all(len(n.input) == 4 for n in odd)  # asymmetric: zero points written
    for node in odd:
        w = weights[node.name.removesuffix("_Q4")]
        err = np.linalg.norm(_read_back(model, node) - w) / np.linalg.norm(w)
        # 4-bit blocks of 64 on a random matrix: ~0.1. A zero point in the wrong column or nibble shifts whole
        # blocks by several steps (> 0.3 here).
        assert err < 0.2, (node.name, err)

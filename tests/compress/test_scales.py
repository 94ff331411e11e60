"""Block scales stored as float16 behind a Cast (compress/scales.py): smaller files, the same kernels.

On a tiny tied Llama: every MatMulNBits / GatherBlockQuantized scale is a float16 initializer behind a Cast, the
file shrinks by half the float32 scale bytes, onnxruntime folds the Casts away at load (the optimized graph has
none left), and the logits stay within a small fraction of the quantization error of the float32-scale twin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.catalog import load_target
from edgekit.compress import compress, method_spec
from edgekit.compress.scales import store_half
from edgekit.runtime import Decoder

AVX512 = load_target("x86-avx512-vnni")
BLOCK_OPS = ("MatMulNBits", "GatherBlockQuantized")


def _scale_bytes(model: onnx.ModelProto) -> int:
    wanted = {n.input[2] for n in model.graph.node if n.op_type in BLOCK_OPS}
    producers = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    names = {producers.get(w, w) for w in wanted}
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer if i.name in names)


def _logits(path: Path, ids: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), **Decoder(sess).empty_past(1)}
    if "num_logits_to_keep" in {i.name for i in sess.get_inputs()}:
        feeds["num_logits_to_keep"] = np.zeros(1, np.int64)
    return np.asarray(sess.run(["logits"], feeds)[0])


@pytest.mark.parametrize("method", ["int8-weight", "int4-rtn"])
def test_half_scales_shrink_the_file_and_keep_the_logits(method: str, tiny_onnx: Any, tmp_path: Path) -> None:
    art = tiny_onnx("llama-tied")
    # Float compute (accuracy_level 0): int8 activations would turn a tiny random model's float16 rounding into
    # flipped activation codes, which is chaos of the model, not of the scales.
    half = compress(art, method_spec(method, AVX512, accuracy_level=0), AVX512, tmp_path / "half",
                    checks_enabled=False)
    full = compress(art, method_spec(method, AVX512, accuracy_level=0, scale_dtype="float32"), AVX512,
                    tmp_path / "full", checks_enabled=False)
    m_half, m_full = onnx.load(str(half.model_file)), onnx.load(str(full.model_file))
    inits = {i.name: i for i in m_half.graph.initializer}
    casts = {n.output[0]: n for n in m_half.graph.node if n.op_type == "Cast" and n.input[0] in inits}
    for node in (n for n in m_half.graph.node if n.op_type in BLOCK_OPS):
        scale = node.input[2]
        while scale not in casts:  # a shared table reads the lm_head's scales through a Reshape view
            scale = next(n.input[0] for n in m_half.graph.node if n.output[0] == scale)
        assert inits[casts[scale].input[0]].data_type == TensorProto.FLOAT16, node.name
    full_scales = _scale_bytes(m_full)
    assert full_scales and _scale_bytes(m_half) * 2 == full_scales
    saved = full.model_file.stat().st_size - half.model_file.stat().st_size
    # Less each Cast node's own bytes, which a real model's megabytes of scales dwarf and a tiny one's do not.
    overhead = sum(c.ByteSize() + len(c.name) for c in casts.values())
    assert full_scales / 2 - overhead <= saved <= full_scales / 2
    assert any("float16 behind a Cast" in n for n in half.meta["warnings"]), half.meta["warnings"]

    # onnxruntime folds the Casts into float32 initializers before the kernels prepack: none is left to run.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(half.model_file), opts, providers=["CPUExecutionProvider"])
    assert not [n for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node if n.op_type == "Cast"
                and n.output[0] in casts]

    ids = np.asarray([[3, 7, 100, 511, 0, 42, 7, 9]], dtype=np.int64)
    got, want = _logits(half.model_file, ids), _logits(full.model_file, ids)
    parent = _logits(art.model_file, ids)
    # What float16 scales add is small beside what quantizing costs (tiny Llama: 6 % of it at 8 bits, <1 % at 4).
    assert np.abs(got - want).max() <= 0.1 * np.abs(want - parent).max()
    assert not np.array_equal(got, want)  # the scales did change: float16 rounding reached the logits


def test_scales_out_of_half_range_stay_float32() -> None:
    k, n, block = 32, 4, 32
    nodes, inits = [], []
    for name, scale in (("ok", 0.02), ("tiny", 1e-6)):
        inits += [numpy_helper.from_array(np.zeros((n, 1, block // 2), np.uint8), f"{name}_B"),
                  numpy_helper.from_array(np.full((n,), scale, np.float32), f"{name}_scales")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"{name}_B", f"{name}_scales"], [f"y_{name}"],
                                      domain="com.microsoft", K=k, N=n, bits=4, block_size=block, name=name))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(f"y_{m}", TensorProto.FLOAT, [1, n]) for m in ("ok", "tiny")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    saved, kept = store_half(model)
    assert kept == ["tiny_scales"] and saved == n * 2
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["ok_scales_f16"] == TensorProto.FLOAT16 and types["tiny_scales"] == TensorProto.FLOAT
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMulNBits", "MatMulNBits"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.shape for o in sess.run(None, {"x": np.ones((1, k), np.float32)})] == [(1, n), (1, n)]

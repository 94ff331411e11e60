"""edgekit.export.stream: a model written one initializer at a time parses to what onnx.save_model writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.export import stream


def _model(rng: np.random.Generator) -> tuple[onnx.ModelProto, list[TensorProto]]:
    # Sizes that cross varint length boundaries (127/128 bytes, 16 KiB) and an empty tensor.
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((8, 4100)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.arange(31, dtype=np.float32), "b0"),
             numpy_helper.from_array(np.zeros((0,), dtype=np.int64), "empty")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4100])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="t")
    helper.set_model_props(model, {"k": "v"})
    return model, inits


def test_streamed_model_equals_the_saved_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model, inits = _model(rng)
    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    whole.graph.initializer.extend(inits)
    onnx.save_model(whole, str(tmp_path / "ref.onnx"))
    written = stream.save(model, inits, tmp_path / "s.onnx")
    assert inits == []  # handed over: nothing left holding the tensors
    assert written == (tmp_path / "s.onnx").stat().st_size
    got, want = onnx.load(str(tmp_path / "s.onnx")), onnx.load(str(tmp_path / "ref.onnx"))
    assert got == want
    assert [i.name for i in got.graph.initializer] == ["w0", "w1", "b0", "empty"]
    x = rng.standard_normal((2, 8)).astype(np.float32)
    run = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for f in ("s.onnx", "ref.onnx")]
    np.testing.assert_array_equal(run[0], run[1])


def test_varint() -> None:
    assert [stream.varint(n) for n in (0, 1, 127, 128, 300, 16384)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\x80\x80\x01"]


def test_spooled_tensors_come_first_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    model, inits = _model(rng)
    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    whole.graph.initializer.extend(inits)
    spool = stream.Spool(tmp_path)
    first, rest = inits[:2], inits[2:]
    spool.take(first)
    assert first == [] and spool.nbytes == sum(t.ByteSize() for t in whole.graph.initializer[:2])
    stream.save(model, rest, tmp_path / "s.onnx", spool)
    assert onnx.load(str(tmp_path / "s.onnx")) == whole


@pytest.mark.parametrize("external", [False, True])
def test_load_model_and_skeleton_match_onnx_load(tmp_path: Path, external: bool) -> None:
    from edgekit.export.stream import load_model, load_skeleton

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(np.arange(5, dtype=np.int64), "k")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 32])], inits)
    model = helper.make_model(graph, producer_name="t")
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external, location="m.onnx.data", size_threshold=64)
    assert load_model(path) == onnx.load(str(path))
    skeleton, full = load_skeleton(path), onnx.load(str(path), load_external_data=False)
    for t in full.graph.initializer:
        t.ClearField("raw_data")
        t.ClearField("int64_data")
    assert skeleton == full and [t.name for t in skeleton.graph.initializer] == ["w", "k"]

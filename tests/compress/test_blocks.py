"""MatMulNBits block sizes: a rotated int8-weight export takes the target's larger block, the int4 lm_head its own
block, and the lm_head's block shrinks to one that tiles the hidden size (so a tied embedding can still share it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.catalog import load_target
from edgekit.compress import compress, method_spec
from edgekit.compress.handlers import Plan, _head_block

AVX2 = load_target("x86-avx2")


def _blocks(path: Path) -> dict[str, tuple[int, int]]:
    """node name → (bits, block_size) of every MatMulNBits / GatherBlockQuantized."""
    out = {}
    for n in onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            out[n.name] = (int(a["bits"]), int(a["block_size"]))
    return out


def test_int8_block_follows_the_rotation() -> None:
    assert method_spec("int8-weight", AVX2).block_size == 32  # type: ignore[attr-defined]
    assert method_spec("int8-weight", AVX2, rotated=True).block_size == 64  # type: ignore[attr-defined]
    assert method_spec("int8-weight", AVX2, rotated=True, block_size=32).block_size == 32  # type: ignore[attr-defined]
    # A target without a rotated block (arm64: not measured there) keeps its one block either way.
    assert method_spec("int8-weight", load_target("arm64"), rotated=True).block_size == 32  # type: ignore[attr-defined]


def test_int4_lm_head_gets_its_own_block_and_the_embedding_shares_it(tiny_onnx: Any, tmp_path: Path) -> None:
    art = tiny_onnx("llama-tied")
    out = compress(art, "int4-rtn", AVX2, tmp_path / "q", calibration_samples=2, checks_enabled=False)
    blocks = _blocks(out.path)
    head = {k: v for k, v in blocks.items() if "lm_head" in k}
    body = {k: v for k, v in blocks.items() if "layers" in k}
    assert set(head.values()) == {(8, 64)}
    assert body and set(body.values()) == {(4, 32)}
    gathers = [v for k, v in blocks.items() if k not in head and k not in body]
    assert gathers == [(8, 64)]  # the tied embedding reads the lm_head's 64-blocks: one table
    assert any("reads the lm_head's 8-bit blocks" in n for n in out.meta["warnings"]), out.meta["warnings"]


def test_head_block_halves_until_it_tiles_the_hidden_size() -> None:
    w = numpy_helper.from_array(np.zeros((96, 10), np.float32), "W")
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="/lm_head/MatMul")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w])
    model = helper.make_model(graph)
    plan = Plan(work=Path("."), lm_head="/lm_head/MatMul")
    assert _head_block(model, plan, 64) == 32
    assert plan.notes == ["lm_head block 32, not 64: hidden size 96 is not a multiple of 64"]
    assert _head_block(model, Plan(work=Path("."), lm_head="/lm_head/MatMul"), 32) == 32


def test_gptq_takes_the_spec_block(tiny_onnx: Any, tmp_path: Path) -> None:
    # onnxruntime's GPTQ config defaults to block 128 unless told: the spec's block must reach it.
    out = compress(tiny_onnx("llama"), "int4-gptq", AVX2, tmp_path / "q", calibration_samples=2, checks_enabled=False,
                   block_size=16)
    body = {v for k, v in _blocks(out.path).items() if "layers" in k}
    assert body == {(4, 16)}

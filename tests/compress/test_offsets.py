"""HQQ's float zero points, split into a symmetric MatMulNBits plus block offsets, compute the same model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgekit.compress.offsets import split_float_offsets
from edgekit.runtime import Decoder, make_session


def _hqq(model: Any) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    q.process()
    return q.model.model


def _float_zero_points(model: Any) -> int:
    inits = {i.name: i for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3
               and n.input[3] in inits and inits[n.input[3]].data_type == onnx.TensorProto.FLOAT)


def _prefill_logits(path: Path) -> np.ndarray:
    logits, _ = Decoder(make_session(path)).forward(np.asarray([[5, 17, 42, 99, 7, 3, 11, 60]]), None, 0)
    return logits[0]


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_split_computes_the_same_logits(name: str, tiny_onnx: Any, tmp_path: Path) -> None:
    art = tiny_onnx(name)
    reference = _hqq(onnx.load(str(art.model_file)))
    n_float = _float_zero_points(reference)
    assert n_float > 0
    split = copy.deepcopy(reference)
    # accuracy_level None keeps float compute on both sides, so only the rewrite can differ.
    assert split_float_offsets(split, accuracy_level=None) == n_float
    assert _float_zero_points(split) == 0
    onnx.save(reference, str(tmp_path / "ref.onnx"))
    onnx.save(split, str(tmp_path / "split.onnx"))
    want, got = _prefill_logits(tmp_path / "ref.onnx"), _prefill_logits(tmp_path / "split.onnx")
    np.testing.assert_allclose(got, want, atol=2e-3 * float(np.abs(want).max()))
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0


def test_rewrite_leaves_integer_zero_points_alone(tiny_onnx: Any, tmp_path: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    art = tiny_onnx("llama")
    q = MatMulNBitsQuantizer(onnx.load(str(art.model_file)),
                             algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False))
    q.process()
    before = q.model.model.SerializeToString()
    assert split_float_offsets(q.model.model, accuracy_level=4) == 0
    assert q.model.model.SerializeToString() == before

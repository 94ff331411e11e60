"""onnxruntime's GPTQ path packs 4-bit zero points wrongly when a row has an odd number of blocks; this repacks them.

MatMulNBits reads zero points per output column: ceil(blocks / 2) bytes, two 4-bit points a byte. onnxruntime 1.32's
bundled GPTQ (quantization/neural_compressor/weight_only.py, make_matmul_weight_only_node) packs the flattened
[N × blocks] array two by two instead, which is the same layout only when `blocks` is even. With an odd count (SmolLM2's
hidden 576 in blocks of 64 is 9 blocks) the array has the wrong size and the quantizer stops with "cannot reshape
array of size 13824 into shape (3072, newaxis)", so `int4-gptq --block-size 64` failed on it. The wrapper builds the
node without zero points and adds them packed per column, padded with the neutral point 8 as MatMulNBits expects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

NEUTRAL = 8  # the zero point MatMulNBits assumes for a missing one; pads an odd row's last byte


def pack_4bit(zero_points: np.ndarray, columns: int, blocks: int) -> np.ndarray:
    """[columns × blocks] 4-bit zero points (any shape holding that many) → [columns, ceil(blocks / 2)] uint8."""
    points = np.asarray(zero_points).astype(np.uint8).reshape(columns, blocks)
    if blocks % 2:
        points = np.concatenate([points, np.full((columns, 1), NEUTRAL, dtype=np.uint8)], axis=1)
    packed: np.ndarray = (points[:, ::2] | (points[:, 1::2] << 4)).astype(np.uint8)
    return packed


@contextlib.contextmanager
def packed_per_column() -> Iterator[None]:
    """While active, onnxruntime's GPTQ writes its 4-bit zero points with `pack_4bit`."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization.neural_compressor import weight_only

    original = weight_only.make_matmul_weight_only_node

    def make_node(node: Any, weight_shape: Any, num_bits: int, group_size: int, k_blocks: int, q_weight: Any,
                  scale: Any, zero_point: Any, accuracy_level: int = 0) -> tuple[Any, list[Any]]:
        q_node, inits = original(node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale,
                                 None if num_bits == 4 else zero_point, accuracy_level)
        if num_bits == 4 and zero_point is not None:
            packed = pack_4bit(zero_point, int(weight_shape[1]), k_blocks)
            zp = helper.make_tensor(node.input[1] + "_zp", TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True)
            q_node.input.append(zp.name)
            inits.append(zp)
        return q_node, inits

    weight_only.make_matmul_weight_only_node = make_node
    try:
        yield
    finally:
        weight_only.make_matmul_weight_only_node = original

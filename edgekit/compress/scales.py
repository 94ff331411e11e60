"""Block scales stored as float16, as GGUF stores them, and cast back to float32 when the session loads.

Why: MatMulNBits and GatherBlockQuantized take scales of the activations' type (float32 on CPU), and at a 32-block
a float32 scale is one bit per weight: int4 writes 5 bits where llama.cpp's Q4_0 writes 4.5 (SmolLM2 int4-rtn
96 vs 88 MiB). A float16 initializer behind a Cast costs nothing at run time: onnxruntime's constant folding
(every optimization level but "disable") turns Cast(initializer) into a float32 initializer before the kernels
prepack, so they see exactly what they saw before, scales rounded to float16 (relative error <= 2^-11, far below
a 4- or 8-bit step).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto

log = logging.getLogger(__name__)

# Scale input index of the block-quantized ops.
SCALE_INPUT = {"MatMulNBits": 2, "GatherBlockQuantized": 2}
HALF_SUFFIX = "_f16"
# Smallest normal float16: below it float16 loses relative precision (subnormals), so such a tensor stays float32.
HALF_TINY = float(np.finfo(np.float16).tiny)
HALF_MAX = float(np.finfo(np.float16).max)


def store_half(model: ModelProto) -> tuple[int, list[str]]:
    """Rewrite every float32 block-scale initializer as float16 + Cast, in place. Returns (bytes saved, names of
    the scale tensors kept float32 because float16 cannot hold them)."""
    from onnx import TensorProto, helper, numpy_helper

    wanted = {n.input[i] for n in model.graph.node for op, i in SCALE_INPUT.items()
              if n.op_type == op and len(n.input) > i and n.input[i]}
    casts, kept, saved = [], [], 0
    for init in model.graph.initializer:
        if init.name not in wanted or init.data_type != TensorProto.FLOAT:
            continue
        scales = numpy_helper.to_array(init)
        mag = np.abs(scales[scales != 0])
        if mag.size and (mag.min() < HALF_TINY or mag.max() > HALF_MAX):
            kept.append(init.name)
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(scales.astype(np.float16), name + HALF_SUFFIX))
        casts.append(helper.make_node("Cast", [name + HALF_SUFFIX], [name], name=name + "/to_float",
                                      to=TensorProto.FLOAT))
        saved += scales.nbytes // 2
    # First in the node list: they read initializers only, so the graph stays topologically sorted.
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if kept:
        log.info("block scales kept float32 (outside float16's normal range): %s", ", ".join(kept[:5]))
    log.info("block scales stored as float16 behind a Cast: %d tensors, %.1f MB saved", len(casts), saved / 1e6)
    return saved, kept

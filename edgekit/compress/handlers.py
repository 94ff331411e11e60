"""One handler per spec type: ModelProto in, quantized ModelProto out, all through onnxruntime's quantizers.

`plan.exclude` holds node names that stay float (keep-fp, fallback); handlers never decide that themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.compress.specs import DynamicInt8Spec, Fp16Spec, MethodSpec, StaticInt8Spec, WeightOnlySpec
from edgekit.errors import CompressError

if TYPE_CHECKING:
    from onnx import ModelProto

log = logging.getLogger(__name__)


@dataclass
class Plan:
    work: Path
    exclude: set[str] = field(default_factory=set)
    # Sensitive nodes a 4-bit method quantizes at 8 bit instead (the --max-top1-drop fallback).
    upgrade: set[str] = field(default_factory=set)
    lm_head: str | None = None
    embedding: str | None = None
    gathers: list[str] = field(default_factory=list)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The embedding table is the lm_head weight transposed (tied); then the Gather reads the lm_head's blocks.
    tied: bool = False
    shared_bits: int = 0  # set by the handler: bits of the table the embedding shares with the lm_head (0: none)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    # quantize_static and its preprocessing drop temp files in the working directory.
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def save_model(model: ModelProto, path: Path) -> Path:
    """Save an onnx ModelProto, with external data past protobuf's 2 GB limit."""
    import onnx

    big = model.ByteSize() > 1_500_000_000 if model.ByteSize() >= 0 else True
    onnx.save_model(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return path


def _nbits(model: ModelProto, algo_config: Any, spec: WeightOnlySpec, exclude: set[str], bits: int) -> ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Quantizer(MatMulNBitsQuantizer):  # type: ignore[misc]
        # onnxruntime's GPTQ path ignores nodes_to_exclude; its node config understands "fp32" = skip.
        def _generate_q4_node_config(self) -> dict[str, Any]:
            cfg: dict[str, Any] = super()._generate_q4_node_config()
            for name in self.nodes_to_exclude:
                if name in cfg:
                    cfg[name] = "fp32"
            return cfg

    from edgekit.compress.gptq_zero_points import packed_per_column

    q = Quantizer(model, bits=bits, block_size=spec.block_size, is_symmetric=spec.symmetric,
                  accuracy_level=spec.accuracy_level, nodes_to_exclude=sorted(exclude), algo_config=algo_config)
    with packed_per_column():  # onnxruntime's GPTQ packing breaks on rows with an odd number of blocks
        q.process()
    quantized: ModelProto = q.model.model
    return quantized


def weight_only(spec: WeightOnlySpec, model: ModelProto, plan: Plan) -> ModelProto:
    """MatMulNBits for every weight MatMul; the lm_head at `lm_head_bits`; the embedding Gather at `embed_bits`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
    )

    head_bits = spec.bits if spec.lm_head_bits is None else spec.lm_head_bits
    head_block = _head_block(model, plan, spec.lm_head_block_size or spec.block_size)
    own_head_pass = head_bits != spec.bits or head_block != spec.block_size
    main_exclude = set(plan.exclude) | plan.upgrade
    if plan.lm_head and own_head_pass:
        main_exclude.add(plan.lm_head)
    if spec.algo == "hqq":
        cfg: Any = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=spec.bits)
    elif spec.algo == "gptq":
        from edgekit.compress.calibration import make_reader

        if not plan.feeds:
            raise CompressError("int4-gptq needs calibration text and got none")
        cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=make_reader(plan.feeds))
    else:
        cfg = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric,
                                           accuracy_level=spec.accuracy_level, bits=spec.bits)
    model = _nbits(model, cfg, spec, main_exclude, spec.bits)
    # Later passes only find MatMuls the first one left: the lm_head, fallbacks, and keep-fp ones (excluded).
    passes: dict[tuple[int, int], set[str]] = {(8, spec.block_size): set(plan.upgrade)} if plan.upgrade else {}
    if plan.lm_head and own_head_pass and head_bits and plan.lm_head not in plan.exclude:
        passes.setdefault((head_bits, head_block), set()).add(plan.lm_head)
    for (bits, block), names in passes.items():
        cfg_n = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True,
                                             accuracy_level=spec.accuracy_level, bits=bits)
        others = set(plan.exclude) | {n for group in passes.values() for n in group if n not in names}
        model = _nbits(model, cfg_n, spec.model_copy(update={"block_size": block}), others, bits)
    if spec.algo == "hqq":  # last: the fp32 correction MatMuls it adds must not meet another quantizer pass
        from edgekit.compress.offsets import split_float_offsets

        split = split_float_offsets(model, spec.accuracy_level)
        plan.notes.append(f"HQQ float zero points split into symmetric 4-bit + block offsets on {split} MatMuls "
                          "(onnxruntime's fast kernels take integer zero points only)")
    if spec.embed_bits and plan.embedding and plan.embedding not in plan.exclude:
        model = _embedding(model, spec, plan)
    if spec.scale_dtype == "float16":
        from edgekit.compress.scales import store_half

        saved, kept = store_half(model)
        plan.notes.append(f"block scales stored as float16 behind a Cast onnxruntime folds at load "
                          f"({saved / 1e6:.1f} MB saved)" + (f"; {len(kept)} kept float32 (out of float16's range)"
                                                             if kept else ""))
    return model


def _head_block(model: ModelProto, plan: Plan, block: int) -> int:
    """The lm_head's block, halved until it divides the hidden size: a tied embedding can share the lm_head's
    blocks only when whole blocks tile its rows (GatherBlockQuantized)."""
    node = next((n for n in model.graph.node if n.name == plan.lm_head), None)
    init = next((i for i in model.graph.initializer if node is not None and i.name == node.input[1]), None)
    if init is None or len(init.dims) != 2:
        return block
    hidden, wanted = int(init.dims[0]), block
    while block > 16 and hidden % block:
        block //= 2
    if block != wanted:
        plan.notes.append(f"lm_head block {block}, not {wanted}: hidden size {hidden} is not a multiple of {wanted}")
    return block


def _embedding(model: ModelProto, spec: WeightOnlySpec, plan: Plan) -> ModelProto:
    """The token embedding as GatherBlockQuantized: over the lm_head's own blocks when tied, else its own table."""
    from edgekit.compress import shared

    plan.shared_bits = 0
    if plan.tied and plan.lm_head and plan.embedding:
        plan.shared_bits = shared.share(model, plan.embedding, plan.lm_head) or 0
    if plan.shared_bits:
        note = (f"tied embedding: the Gather reads the lm_head's {plan.shared_bits}-bit blocks "
                "(one table in the graph, not two)")
        if note not in plan.notes:
            plan.notes.append(note)
        return model
    return _own_embedding(model, spec, plan)


def _own_embedding(model: ModelProto, spec: WeightOnlySpec, plan: Plan) -> ModelProto:
    """The token-embedding Gather as GatherBlockQuantized: 4-bit via onnxruntime's Gather quantizer, 8-bit
    (which that quantizer lacks) from onnxruntime's own 8-bit block kernel, blocks along the hidden axis."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    if spec.embed_bits == 8:
        return _embedding8(model, spec, plan)
    cfg = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric, bits=4,
                                       op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    # Constant-index Gathers on shape tensors must not be touched: exclude every Gather but the embedding.
    others = {n.name for n in model.graph.node if n.op_type == "Gather" and n.name != plan.embedding}
    return _nbits(model, cfg, spec, others | plan.exclude, 4)


def _embedding8(model: ModelProto, spec: WeightOnlySpec, plan: Plan) -> ModelProto:
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    node = next(n for n in model.graph.node if n.name == plan.embedding)
    init = next(i for i in model.graph.initializer if i.name == node.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    vocab, hidden = table.shape
    if hidden % spec.block_size:
        plan.notes.append(f"embedding kept float: hidden size {hidden} is not a multiple of {spec.block_size}")
        return model
    kernel = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=spec.block_size, bits=8,
                                                                     is_symmetric=False))
    # The kernel quantizes columns of a [K, N] matrix in blocks along K: give it the table transposed.
    packed, scales, zero_points = kernel.qbits_block_quant(np.ascontiguousarray(table.T))
    blocks = hidden // spec.block_size
    inits = [numpy_helper.from_array(packed.reshape(vocab, hidden), init.name + "_Q8"),
             numpy_helper.from_array(scales.reshape(vocab, blocks).astype(np.float32), init.name + "_scales"),
             numpy_helper.from_array(zero_points.reshape(vocab, blocks), init.name + "_zero_points")]
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    new = helper.make_node("GatherBlockQuantized", [inits[0].name, node.input[1], inits[1].name, inits[2].name],
                           list(node.output), name=node.name + "_Q8", domain="com.microsoft", gather_axis=axis,
                           quantize_axis=1, block_size=spec.block_size, bits=8)
    nodes = [new if n.name == node.name else n for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    users = sum(name == init.name for n in model.graph.node for name in n.input)
    if not users:
        model.graph.initializer.remove(init)
    model.graph.initializer.extend(inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def dynamic_int8(spec: DynamicInt8Spec, model: ModelProto, plan: Plan) -> ModelProto:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = save_model(model, plan.work / "dyn_in.onnx"), plan.work / "dyn_out.onnx"
    with _cwd(plan.work):
        quantize_dynamic(src, dst, op_types_to_quantize=list(spec.op_types), per_channel=spec.per_channel,
                         reduce_range=spec.reduce_range, weight_type=_qtype(QuantType, spec.weight_type),
                         nodes_to_exclude=sorted(plan.exclude), extra_options=_extra())
    return onnx.load(str(dst))


def static_int8(spec: StaticInt8Spec, model: ModelProto, plan: Plan) -> ModelProto:
    """QDQ static int8 after onnxruntime's recommended preprocessing (shape inference + optimization)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekit.compress.calibration import make_reader

    if not plan.feeds:
        raise CompressError("int8-static needs calibration text and got none")
    src, pre, dst = save_model(model, plan.work / "st_in.onnx"), plan.work / "st_pre.onnx", plan.work / "st_out.onnx"
    with _cwd(plan.work):
        pre = _preprocess(src, pre, plan)
        quantize_static(str(pre), str(dst), make_reader(plan.feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(spec.op_types), per_channel=spec.per_channel,
                        reduce_range=spec.reduce_range, activation_type=_qtype(QuantType, spec.activation_type),
                        weight_type=_qtype(QuantType, spec.weight_type), nodes_to_exclude=sorted(plan.exclude),
                        calibrate_method=CalibrationMethod.MinMax, extra_options=_extra())
    return onnx.load(str(dst))


def _preprocess(src: Path, dst: Path, plan: Plan) -> Path:
    """onnxruntime's recommended pre-quantization pass; symbolic shape inference does not know every
    contrib op of an optimized graph, so fall back to ONNX shape inference, then to the graph as is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic, skip_optimization=False)
            plan.notes.append(f"preprocessed (symbolic shape inference: {'off' if skip_symbolic else 'on'})")
            return dst
        except Exception as exc:
            last = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            log.info("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic, last)
    plan.notes.append(f"quant_pre_process failed, quantizing without it: {last}")
    return src


def _extra() -> dict[str, Any]:
    from onnx import TensorProto

    # Contrib ops of the optimized graph (SimplifiedLayerNormalization, ...) defeat type inference: outputs
    # with unknown types are float here.
    return {"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT}


def fp16(spec: Fp16Spec, model: ModelProto, plan: Plan) -> ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half: ModelProto = convert_float_to_float16(model, keep_io_types=spec.keep_io_types,
                                                node_block_list=sorted(plan.exclude) or None)
    return half


def _qtype(enum: Any, name: str) -> Any:
    return enum.QInt8 if name == "qint8" else enum.QUInt8


HANDLERS: dict[type[MethodSpec], Callable[[Any, Any, Plan], Any]] = {
    WeightOnlySpec: weight_only,
    DynamicInt8Spec: dynamic_int8,
    StaticInt8Spec: static_int8,
    Fp16Spec: fp16,
}


def run_handler(spec: MethodSpec, model: ModelProto, plan: Plan) -> ModelProto:
    handler = HANDLERS.get(type(spec))
    if handler is None:
        raise CompressError(f"no quantizer for spec {type(spec).__name__}")
    try:
        variant: ModelProto = handler(spec, model, plan)
        return variant
    except CompressError:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CompressError(f"{spec.method} failed in onnxruntime's quantizer: {first}") from exc

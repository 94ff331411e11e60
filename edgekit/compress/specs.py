"""One frozen spec per quantization family, torchao-style: the spec says what, a handler in quantize.py does it.

`method_spec(name, target, **overrides)` turns a method name (`int4-hqq`, ...) into its spec with the
target's ISA-aware defaults (`target.quantization`) filled in; overrides come from the CLI or the API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import ConfigError, UnsupportedError
from edgekit.specs import QUANT_METHODS, Target


class MethodSpec(BaseModel):
    """Base of every quantization spec: immutable, unknown keys rejected, no coercion from strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    method: str
    # Node names (or name substrings, e.g. "lm_head", "layers.0/") left in float.
    keep_fp: Annotated[tuple[str, ...], Field(strict=False)] = ()  # a list is fine; items stay strict

    def settings(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class WeightOnlySpec(MethodSpec):
    """Block-wise weight-only quantization to MatMulNBits (activations stay float)."""

    method: Literal["int8-weight", "int4-rtn", "int4-hqq", "int4-gptq"] = "int8-weight"
    bits: Literal[4, 8] = 8
    block_size: Annotated[int, Field(ge=16, le=256)] = 32
    algo: Literal["rtn", "hqq", "gptq"] = "rtn"
    accuracy_level: Annotated[int, Field(ge=0, le=4)] | None = 4
    symmetric: bool = True
    # Bits for the lm_head MatMul (None: same as `bits`; 0: keep it float). ORT-GenAI/Olive keep it at 8.
    lm_head_bits: Literal[0, 4, 8] | None = None
    # The lm_head's block (None: block_size). An 8-bit lm_head loses little to a larger block, and on AVX-512 the
    # int8-activation kernel runs a 64-block 1.2x faster than a 32-block (SmolLM2 decode, benchmarks/blocks.py).
    lm_head_block_size: Annotated[int, Field(ge=16, le=256)] | None = None
    # Token-embedding Gather as GatherBlockQuantized (the tied embedding is 113 MB of SmolLM2); 0 = keep float.
    embed_bits: Literal[0, 4, 8] = 8
    # Block scales on disk: float16 behind a Cast onnxruntime folds at load (compress/scales.py), or float32.
    scale_dtype: Literal["float16", "float32"] = "float16"

    @model_validator(mode="after")
    def _check(self) -> WeightOnlySpec:
        for name, size in (("block_size", self.block_size), ("lm_head_block_size", self.lm_head_block_size)):
            if size is not None and size & (size - 1):
                raise ValueError(f"{name} must be a power of two, got {size}")
        if self.algo == "gptq" and self.bits != 4:
            raise ValueError("GPTQ in onnxruntime is 4-bit only")
        return self


class DynamicInt8Spec(MethodSpec):
    """quantize_dynamic: int8 weights, activations quantized per call from their observed range."""

    method: Literal["int8-dynamic"] = "int8-dynamic"
    weight_type: Literal["qint8", "quint8"] = "qint8"
    per_channel: bool = True
    reduce_range: bool = False
    # Attention → QAttention: the fused encoder attention's QKV projection is a third of MiniLM's matmuls.
    op_types: Annotated[tuple[str, ...], Field(strict=False)] = ("MatMul", "Attention")


class StaticInt8Spec(MethodSpec):
    """quantize_static in QDQ format with MinMax calibration (ranges fixed offline)."""

    method: Literal["int8-static"] = "int8-static"
    weight_type: Literal["qint8", "quint8"] = "qint8"
    activation_type: Literal["qint8", "quint8"] = "quint8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: Annotated[tuple[str, ...], Field(strict=False)] = ("MatMul",)


class Fp16Spec(MethodSpec):
    """Float16 weights and compute; graph inputs/outputs stay float32 so callers need not change."""

    method: Literal["fp16"] = "fp16"
    keep_io_types: bool = True


AnySpec = WeightOnlySpec | DynamicInt8Spec | StaticInt8Spec | Fp16Spec


def _defaults(name: str, target: Target, rotated: bool) -> tuple[type[MethodSpec], dict[str, Any]]:
    q8, q4 = target.quantization.int8, target.quantization.int4
    if name == "fp16":
        return Fp16Spec, {}
    if name == "int8-weight":
        # The target's accuracy_level (4: int8 activations): on SmolLM2, float compute (0) keeps 2 more points
        # of top-1 (0.973 vs 0.951) but onnxruntime 1.32 has no fast 8-bit float kernel: decode ~10x slower.
        block = (q8.rotated_weight_block_size if rotated else None) or q8.weight_block_size
        return WeightOnlySpec, {"method": name, "bits": 8, "block_size": block, "algo": "rtn",
                                "symmetric": True, "accuracy_level": q4.accuracy_level, "lm_head_bits": 8,
                                "embed_bits": 8, "scale_dtype": target.quantization.scale_dtype}
    if name == "int8-dynamic":
        if q8.dynamic_weight_type == "quint8":
            # u8u8 cannot saturate, so the weights keep all 8 bits.
            return DynamicInt8Spec, {"weight_type": "quint8", "per_channel": q8.per_channel, "reduce_range": False}
        return DynamicInt8Spec, {"weight_type": q8.dynamic_weight_type or q8.weight_type,
                                 "per_channel": q8.per_channel, "reduce_range": q8.reduce_range}
    if name == "int8-static":
        return StaticInt8Spec, {"weight_type": q8.weight_type, "activation_type": q8.activation_type,
                                "per_channel": q8.per_channel, "reduce_range": q8.reduce_range}
    algo = name.removeprefix("int4-")
    # HQQ's float zero points make it asymmetric by construction; RTN keeps more with an offset too.
    return WeightOnlySpec, {"method": name, "bits": 4, "block_size": q4.block_size, "algo": algo,
                            "accuracy_level": q4.accuracy_level, "symmetric": False,
                            "lm_head_bits": 8, "lm_head_block_size": q4.lm_head_block_size, "embed_bits": 8,
                            "scale_dtype": target.quantization.scale_dtype}


def method_spec(name: str, target: Target, *, rotated: bool = False, **overrides: Any) -> MethodSpec:
    """The spec for `name` on `target`: target defaults (for a rotated export where the target has its own),
    then non-None `overrides` on top."""
    from edgekit.catalog import check_method

    if name not in QUANT_METHODS:
        raise UnsupportedError(f"unknown quantization method {name!r} (known: {', '.join(QUANT_METHODS)})")
    check_method(name, target)
    cls, values = _defaults(name, target, rotated)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "keep_fp" in values:
        values["keep_fp"] = tuple(values["keep_fp"])
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or name
        raise ConfigError(f"{name}: {where}: {err['msg']}") from exc


def is_rotated(meta: dict[str, Any]) -> bool:
    """Whether an export's record (export.json) says its weights were rotated (edgekit.export.rotation)."""
    return str((meta.get("rotation") or {}).get("mode", "off")) != "off"

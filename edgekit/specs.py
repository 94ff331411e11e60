"""Frozen, strict specs for what users write in YAML: compile targets and device profiles.

Every model forbids unknown keys and checks units and ranges, so a typo in a budget is an error,
never a silently ignored rule. Loading from files (and naming the file in errors) lives in catalog.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.errors import UnsupportedError
from edgekit.kinds import METHODS, QUANT_METHODS, TASKS, Method, RotateMode, Task

__all__ = ["METHODS", "QUANT_METHODS", "TASKS", "Method", "Task"]  # re-exported: specs is where callers look

def detect_task(config: dict[str, Any]) -> str:
    """The task of an HF config.json, from its architecture; the one detection (source, artifact and runtime)."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else ""
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "text-generation"
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith("Model") or config.get("model_type") == "bert":
        return "feature-extraction"
    raise UnsupportedError(
        f"cannot tell the task of architecture '{arch or config.get('model_type')}'; pass --task "
        "(text-generation, text-classification or feature-extraction)"
    )

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Spec(BaseModel):
    """Base for every user-facing spec: immutable, unknown keys rejected, no type coercion from strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False, strict=True)


# ---------------------------------------------------------------- targets: how to build


class RotateSettings(Spec):
    """QuaRot-style rotation in the fused writer (edgekit.export.rotation); exact in float, off by default because on
    SmolLM2 it did not pay enough (docs/rotation.md)."""

    # off | residual (residual stream, norm gains folded) | heads (+ Hadamard on value heads / o_proj input,
    # folded) | full (+ online block-Hadamard before down_proj)
    mode: RotateMode = "off"
    # Randomized Hadamard where one of order `hidden` is constructible, else random orthogonal (recorded).
    basis: Literal["hadamard", "orthogonal"] = "hadamard"
    # Online Hadamard block before down_proj (MatMulNBits quantizes activations in blocks of its block_size);
    # 0 = all channels (Paley ⊗ Sylvester factors).
    block: Annotated[int, Field(ge=0, le=4096)] = 32
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _power_of_two(self) -> RotateSettings:
        if self.block & (self.block - 1):
            raise ValueError(f"rotate block must be a power of two (or 0: all channels), got {self.block}")
        return self


class ExportSettings(Spec):
    opset: Annotated[int, Field(ge=14, le=23)] = 17
    # Decoder graph writer: "fused" (edgekit.fused, GroupQueryAttention), "optimum" (traced), "auto" = fused
    # where the architecture is covered.
    graph: Literal["auto", "fused", "optimum"] = "auto"
    rotate: RotateSettings = RotateSettings()


class OptimizeSettings(Spec):
    # onnxruntime graph optimization level applied offline; "all" adds layout and transformer fusions.
    graph_level: Literal["disable", "basic", "extended", "all"] = "all"


class Int8Settings(Spec):
    weight_type: Literal["qint8", "quint8"] = "qint8"
    activation_type: Literal["qint8", "quint8"] = "quint8"
    per_channel: bool = True
    # Without VNNI, u8s8 products can saturate the 16-bit intermediates on AVX2: reduce_range avoids it.
    reduce_range: bool = False
    # Dynamic int8 weights (None: weight_type). Dynamic activations use the full u8 range, so on AVX2 the
    # saturation-free choice is u8u8 (onnxruntime's other remedy): reduce_range's 7-bit weights cost MiniLM
    # cosine 0.990 where u8u8 keeps 0.994.
    dynamic_weight_type: Literal["qint8", "quint8"] | None = None
    # int8-weight's MatMulNBits block (lm_head included), and its block on a rotated export (None: the same).
    # MLAS's int8-activation kernel pays per block: an AVX-512 host decodes SmolLM2 1.18x faster at 64 than at
    # 32. Rotation spreads the outliers a larger block would feel: rotated, 64 keeps KLD 0.0047 (32: 0.0036;
    # llama.cpp Q8_0: 0.0058); unrotated, 64 gives 0.0083 (benchmarks/blocks.py).
    weight_block_size: Annotated[int, Field(ge=16, le=256)] = 32
    rotated_weight_block_size: Annotated[int, Field(ge=16, le=256)] | None = None

    @model_validator(mode="after")
    def _power_of_two(self) -> Int8Settings:
        for name, size in (("weight_block_size", self.weight_block_size),
                           ("rotated_weight_block_size", self.rotated_weight_block_size)):
            if size is not None and size & (size - 1):
                raise ValueError(f"{name} must be a power of two, got {size}")
        return self


class Int4Settings(Spec):
    block_size: Annotated[int, Field(ge=16, le=256)] = 32
    accuracy_level: Annotated[int, Field(ge=0, le=4)] = 4
    # The 8-bit lm_head's block (None: block_size): a 64-block costs SmolLM2 int4-rtn no KLD (0.331 vs 0.330)
    # and decodes 1.11x faster on an AVX-512 host (benchmarks/blocks.py).
    lm_head_block_size: Annotated[int, Field(ge=16, le=256)] | None = None

    @model_validator(mode="after")
    def _power_of_two(self) -> Int4Settings:
        for name, size in (("block_size", self.block_size), ("lm_head_block_size", self.lm_head_block_size)):
            if size is not None and size & (size - 1):
                raise ValueError(f"{name} must be a power of two, got {size}")
        return self


class QuantizationSettings(Spec):
    int8: Int8Settings = Int8Settings()
    int4: Int4Settings = Int4Settings()
    # How weight-only methods store MatMulNBits / GatherBlockQuantized block scales on disk. float16 (GGUF's choice)
    # behind a Cast that onnxruntime folds at load: the kernels see float32 scales, the file is 0.5 bit/weight
    # smaller at a 32-block (SmolLM2 int4-rtn 88.7 vs 95.8 MiB; compress/scales.py).
    scale_dtype: Literal["float16", "float32"] = "float16"


class Target(Spec):
    schema_: Literal["edgekit/target@1"] = Field(alias="schema")
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    description: str = ""
    runtime: Literal["onnxruntime"] = "onnxruntime"
    device: Literal["cpu", "gpu"]
    arch: Literal["x86_64", "arm64"]
    # YAML has no tuples: a list is accepted for the sequence, its items stay strict.
    execution_providers: Annotated[tuple[str, ...], Field(min_length=1, strict=False)]
    export: ExportSettings = ExportSettings()
    optimize: OptimizeSettings = OptimizeSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    supports: Annotated[tuple[Method, ...], Field(min_length=1, strict=False)]

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False, strict=True)


# ---------------------------------------------------------------- profiles: what must hold on a device


class Efficiency(Spec):
    """The fraction of a datasheet peak that software reaches on the device in practice, with the spread of the
    sources behind it: the estimate's interval comes from [low, high]."""

    value: Fraction
    low: Fraction
    high: Fraction

    @model_validator(mode="after")
    def _ordered(self) -> Efficiency:
        if not self.low <= self.value <= self.high:
            raise ValueError(f"need low <= value <= high, got {self.low}, {self.value}, {self.high}")
        return self


# A device without a cited efficiency: a deliberately wide band, so its budget rules turn "?" near the threshold.
UNCITED_EFFICIENCY = Efficiency(value=0.5, low=0.25, high=0.85)


class DeviceSpec(Spec):
    # `host: true` means "this machine": figures are measured, never estimated.
    host: bool = False
    cores: PositiveInt | None = None
    memory_mb: PositiveFloat | None = None
    memory_bandwidth_gbps: PositiveFloat | None = None
    peak_gflops_fp32: PositiveFloat | None = None
    # Informational: estimates compare fp32 peaks on both sides (the host's measured run already holds its int8 gain).
    peak_gops_int8: PositiveFloat | None = None
    # Measured fraction of the datasheet bandwidth (STREAM-class) and fp32 peak (sgemm) reached on the device.
    bandwidth_efficiency: Efficiency | None = None
    compute_efficiency: Efficiency | None = None

    @model_validator(mode="after")
    def _figures_for_estimates(self) -> DeviceSpec:
        if not self.host:
            missing = [k for k in ("memory_bandwidth_gbps", "peak_gflops_fp32")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a device that is not the host needs {', '.join(missing)} for estimates")
        return self


class Workload(Spec):
    batch_size: PositiveInt = 1
    prompt_tokens: Annotated[int, Field(gt=0, le=32768)] = 64
    new_tokens: Annotated[int, Field(gt=0, le=8192)] = 32
    threads: Annotated[int, Field(gt=0, le=256)] = 1


class Budgets(Spec):
    model_size_mb: PositiveFloat | None = None
    peak_rss_mb: PositiveFloat | None = None
    decode_tokens_per_s_min: PositiveFloat | None = None
    ttft_ms_p95: PositiveFloat | None = None
    latency_ms_p95: PositiveFloat | None = None


class FidelityFloors(Spec):
    top1_agreement_min: Fraction | None = None
    kld_mean_max: PositiveFloat | None = None
    ppl_ratio_max: Annotated[float, Field(ge=1)] | None = None
    accuracy_ratio_min: Fraction | None = None
    cosine_min: Fraction | None = None
    # Decode path (greedy through the variant's KV cache): share of tokens matched before the first divergence,
    # and the KLD on decode steps fed the source's continuation.
    decode_match_fraction_min: Fraction | None = None
    decode_kld_mean_max: PositiveFloat | None = None


class RegressionTolerance(Spec):
    """How much worse than a baseline report a new one may be before `gate --baseline` fails."""

    max_slowdown_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    max_size_increase_pct: Annotated[float, Field(ge=0)] = 1.0
    max_kld_increase: Annotated[float, Field(ge=0)] = 0.005
    max_top1_drop: Annotated[float, Field(ge=0, le=1)] = 0.01


class Profile(Spec):
    schema_: Literal["edgekit/profile@1"] = Field(alias="schema")
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    description: str = ""
    target: Annotated[str, Field(min_length=1)]
    device: DeviceSpec
    workload: Workload = Workload()
    budgets: Budgets = Budgets()
    fidelity: FidelityFloors = FidelityFloors()
    regression: RegressionTolerance = RegressionTolerance()
    default_method: Method = "int8-weight"
    # The device's CPU core as a qemu -cpu model, for emulated target-ISA runs (`verify --emulate`): int8 kernels
    # differ by ISA feature (dotprod, i8mm, SVE), so `max` is not the device.
    cpu_model: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")] | None = None
    # Encoders take dynamic int8 well while decoder LLMs collapse under it, so a profile may pick per task.
    default_method_by_task: dict[Task, Method] = Field(default_factory=dict)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _fits_the_device(self) -> Profile:
        # cores and memory_mb bound what a profile may ask of its device: more threads than cores, or a memory
        # budget above the device's RAM, is a typo that would make every estimate and gate meaningless.
        cores, memory = self.device.cores, self.device.memory_mb
        if cores is not None and self.workload.threads > cores:
            raise ValueError(f"workload.threads {self.workload.threads} exceeds device.cores {cores}")
        if memory is not None and self.budgets.peak_rss_mb is not None and self.budgets.peak_rss_mb > memory:
            raise ValueError(f"budgets.peak_rss_mb {self.budgets.peak_rss_mb:g} exceeds device.memory_mb {memory:g}")
        return self

    def method_for(self, task: str) -> str:
        method: str = self.default_method_by_task.get(task, self.default_method)  # type: ignore[call-overload]
        return method

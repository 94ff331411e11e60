"""The one list of methods and tasks. Everything else (CLI choices, quantization methods, specs, bundle checks)
derives from these two types. Kept free of pydantic: the torch-free device runner reads bundles with it."""

from __future__ import annotations

from typing import Literal, get_args

# Methods in order of increasing compression; see design.md.
Method = Literal[
    "fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static", "int4-rtn", "int4-hqq", "int4-gptq", "distill"
]
Task = Literal["text-generation", "text-classification", "feature-extraction"]
METHODS: tuple[str, ...] = get_args(Method)
TASKS: tuple[str, ...] = get_args(Task)
# What compress/ implements: every method but the unquantized export and distillation (its own stage).
QUANT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in ("fp32", "distill"))
# QuaRot-style rotation in the fused export (edgekit.export.rotation): each mode adds one piece to the last.
RotateMode = Literal["off", "residual", "heads", "full"]
ROTATE_MODES: tuple[str, ...] = get_args(RotateMode)

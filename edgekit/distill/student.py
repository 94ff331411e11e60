"""Build a smaller student from a teacher: depth pruning (keep chosen layers) and MLP width pruning.

The student is a normal transformers model of the teacher's class built from a smaller config, then
filled with the teacher's weights: kept layers are copied whole (DistilBERT/DistilGPT2's "one layer out of
two"), and with width pruning each kept layer keeps the intermediate MLP channels with the largest
weight-magnitude importance (Minitron-style, from weights only: no calibration pass is needed).

Layer choice: `student_layers=N` keeps N evenly spaced layers and always the first and the last
(round(i·(L-1)/(N-1))); `keep_every=K` keeps layers 0, K, 2K, … and always the last one too, because the
last layer shapes the features the LM head / pooler reads.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError, UnsupportedError

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

log = logging.getLogger(__name__)

# Where the repeated blocks live, per model family (BertModel has no "bert." prefix, the classifier has).
LAYER_PATHS: tuple[str, ...] = ("model.layers", "transformer.h", "bert.encoder.layer", "encoder.layer")

# Layer-relative MLP parameter → (role, dim of the intermediate channel). "in" rows produce a channel,
# "out" columns consume it, "fused" is Phi-3's [gate; up] stacked on dim 0.
_GATED = {"mlp.gate_proj.weight": ("in", 0), "mlp.up_proj.weight": ("in", 0), "mlp.gate_proj.bias": ("bias", 0),
          "mlp.up_proj.bias": ("bias", 0), "mlp.down_proj.weight": ("out", 1)}
MLP_PARAMS: dict[str, dict[str, tuple[str, int]]] = {
    "llama": _GATED, "mistral": _GATED, "qwen2": _GATED, "gemma3_text": _GATED,
    "phi3": {"mlp.gate_up_proj.weight": ("fused", 0), "mlp.down_proj.weight": ("out", 1)},
    # GPT-2 uses Conv1D: weight is [in_features, out_features], so the channel dims are swapped.
    "gpt2": {"mlp.c_fc.weight": ("in", 1), "mlp.c_fc.bias": ("bias", 0), "mlp.c_proj.weight": ("out", 0)},
    "bert": {"intermediate.dense.weight": ("in", 0), "intermediate.dense.bias": ("bias", 0),
             "output.dense.weight": ("out", 1)},
}


@dataclass(frozen=True)
class StudentPlan:
    layers: tuple[int, ...]
    intermediate_size: int | None  # None: MLP width unchanged

    def as_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "intermediate_size": self.intermediate_size}


def select_layers(n_teacher: int, *, student_layers: int | None = None, keep_every: int | None = None) -> list[int]:
    """Teacher layer indices the student keeps; default: half of them, evenly spaced."""
    if student_layers is not None and keep_every is not None:
        raise InputError("give either --student-layers or --keep-every, not both")
    if keep_every is not None:
        if keep_every < 2:
            raise InputError(f"--keep-every must be at least 2 (got {keep_every})")
        chosen = list(range(0, n_teacher, keep_every))
        if chosen[-1] != n_teacher - 1:
            chosen.append(n_teacher - 1)
        return chosen
    n = student_layers if student_layers is not None else max(1, n_teacher // 2)
    if not 1 <= n < n_teacher:
        raise InputError(f"--student-layers must be between 1 and {n_teacher - 1} for a {n_teacher}-layer teacher (got {n})")
    if n == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n - 1)) for i in range(n)})


def num_layers(config: Any) -> int:
    return int(config.n_layer if config.model_type == "gpt2" else config.num_hidden_layers)


def intermediate_size(config: Any) -> int:
    if config.model_type == "gpt2":
        return int(config.n_inner or 4 * config.n_embd)
    return int(config.intermediate_size)


def layer_prefix(model: Module) -> str:
    """State-dict prefix of the repeated blocks, e.g. 'model.layers.'."""
    import torch

    for path in LAYER_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.ModuleList):
            return path + "."
    raise UnsupportedError(f"cannot find the transformer layers of {type(model).__name__} (looked for {', '.join(LAYER_PATHS)})")


def student_config(teacher_config: Any, plan: StudentPlan) -> Any:
    """The teacher's config with fewer layers (and a narrower MLP); per-layer lists follow the kept layers."""
    config = copy.deepcopy(teacher_config)
    n_teacher = num_layers(teacher_config)
    for key, value in list(vars(config).items()):
        # e.g. layer_types (sliding/full attention per layer in Gemma-3, Qwen2): keep the kept layers' entries.
        if isinstance(value, list) and len(value) == n_teacher and not key.startswith("_"):
            setattr(config, key, [value[i] for i in plan.layers])
    if teacher_config.model_type == "gpt2":
        config.n_layer = len(plan.layers)
        if plan.intermediate_size is not None:
            config.n_inner = plan.intermediate_size
    else:
        config.num_hidden_layers = len(plan.layers)
        if plan.intermediate_size is not None:
            config.intermediate_size = plan.intermediate_size
    if getattr(config, "max_window_layers", None) is not None and teacher_config.model_type == "qwen2":
        config.max_window_layers = sum(1 for i in plan.layers if i < teacher_config.max_window_layers)
    return config


def channel_importance(layer_sd: dict[str, Tensor], model_type: str, width: int) -> Tensor:
    """Per intermediate channel: product of the L2 norms of its producing rows and its consuming column."""
    import torch

    score = torch.ones(width, dtype=torch.float64)
    for key, (role, dim) in MLP_PARAMS[model_type].items():
        w = layer_sd.get(key)
        if w is None or role == "bias":
            continue
        w = w.detach().double()
        if role == "fused":
            gate, up = w[:width], w[width:]
            score = score * gate.norm(dim=1) * up.norm(dim=1)
        else:
            score = score * w.norm(dim=1 - dim if w.dim() == 2 else 0)
    return score


def keep_channels(layer_sd: dict[str, Tensor], model_type: str, width: int, keep: int) -> Tensor:
    """Indices (sorted) of the `keep` most important channels of one layer."""
    import torch

    score = channel_importance(layer_sd, model_type, width)
    return torch.sort(torch.topk(score, keep).indices).values


def slice_param(value: Tensor, role: str, dim: int, idx: Tensor, width: int) -> Tensor:
    if role == "fused":
        import torch

        return torch.cat([value[:width][idx], value[width:][idx]], dim=0)
    return value.index_select(dim, idx)


def plan_student(teacher_config: Any, *, student_layers: int | None, keep_every: int | None,
                 width_ratio: float) -> StudentPlan:
    model_type = teacher_config.model_type
    if model_type not in MLP_PARAMS:
        raise UnsupportedError(f"cannot build a student for architecture '{model_type}' (supported: {', '.join(MLP_PARAMS)})")
    layers = select_layers(num_layers(teacher_config), student_layers=student_layers, keep_every=keep_every)
    width = None
    if width_ratio < 1.0:
        width = max(1, math.ceil(intermediate_size(teacher_config) * width_ratio))
    return StudentPlan(tuple(layers), width)


def build_student(teacher: Any, plan: StudentPlan) -> Any:
    """A new model of the teacher's class and smaller config, initialised from the teacher's weights."""
    import torch

    config = student_config(teacher.config, plan)
    student = type(teacher)(config).to(torch.float32)
    prefix = layer_prefix(teacher)
    teacher_sd = teacher.state_dict()
    width = intermediate_size(teacher.config)
    rules = MLP_PARAMS[teacher.config.model_type]
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    kept_cache: dict[int, Any] = {}
    new_sd = {}
    for key, target in student.state_dict().items():
        match = pattern.fullmatch(key)
        if match is None:
            new_sd[key] = teacher_sd[key]
            continue
        t_layer = plan.layers[int(match.group(1))]
        rest = match.group(2)
        value = teacher_sd[f"{prefix}{t_layer}.{rest}"]
        if plan.intermediate_size is not None and rest in rules:
            if t_layer not in kept_cache:
                layer_sd = {k: teacher_sd[f"{prefix}{t_layer}.{k}"] for k in rules if f"{prefix}{t_layer}.{k}" in teacher_sd}
                kept_cache[t_layer] = keep_channels(layer_sd, teacher.config.model_type, width, plan.intermediate_size)
            role, dim = rules[rest]
            value = slice_param(value, role, dim, kept_cache[t_layer], width)
        if value.shape != target.shape:
            raise UnsupportedError(f"student parameter {key}: shape {tuple(target.shape)} but teacher gives {tuple(value.shape)}")
        new_sd[key] = value
    student.load_state_dict(new_sd, strict=True)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    log.info("student: layers %s of %d, intermediate %s", list(plan.layers), num_layers(teacher.config),
             plan.intermediate_size or width)
    return student


def parameter_count(model: Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return int(sum(seen.values()))

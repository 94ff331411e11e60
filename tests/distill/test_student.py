"""Student construction: layer choice, shapes, weights copied from the teacher, importance-based width pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgekit.distill.student import (
    MLP_PARAMS,
    build_student,
    layer_prefix,
    parameter_count,
    plan_student,
    select_layers,
)
from edgekit.errors import InputError
from edgekit.source import load_source


def _teacher(tiny_model: Any, name: str) -> Any:
    return load_source(str(tiny_model(name))).load_model()


def test_select_layers_evenly_spaced_keeps_first_and_last() -> None:
    assert select_layers(30, student_layers=15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert select_layers(4, student_layers=2) == [0, 3]
    assert select_layers(12, student_layers=3) == [0, 6, 11]
    assert select_layers(6) == [0, 2, 5]  # default: half
    assert select_layers(6, student_layers=1) == [5]


def test_select_layers_keep_every() -> None:
    assert select_layers(12, keep_every=2) == [0, 2, 4, 6, 8, 10, 11]
    assert select_layers(13, keep_every=3) == [0, 3, 6, 9, 12]


@pytest.mark.parametrize("kwargs", [{"student_layers": 4}, {"student_layers": 0}, {"keep_every": 1},
                                    {"student_layers": 2, "keep_every": 2}])
def test_select_layers_rejects_bad_requests(kwargs: dict[str, int]) -> None:
    with pytest.raises(InputError):
        select_layers(4, **kwargs)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert-emb", "gemma3", "phi3", "qwen2", "mistral", "bert-cls"])
def test_student_shapes_and_parameter_counts(tiny_model: Any, name: str) -> None:
    import torch

    teacher = _teacher(tiny_model, name)
    plan = plan_student(teacher.config, student_layers=2, keep_every=None, width_ratio=0.5)
    student = build_student(teacher, plan)
    prefix = layer_prefix(student)
    assert len(student.get_submodule(prefix.rstrip("."))) == 2
    assert type(student) is type(teacher)
    # The student is exactly the model its config describes: a fresh model from it has the same parameter count.
    assert parameter_count(type(teacher)(student.config)) == parameter_count(student)
    assert parameter_count(student) < parameter_count(teacher)
    # Width: every MLP "in" matrix has half the teacher's channels.
    width = plan.intermediate_size
    assert width == (128 if name == "gpt2" else 64)
    sd = student.state_dict()
    for key, (role, dim) in MLP_PARAMS[teacher.config.model_type].items():
        full = f"{prefix}0.{key}"
        if full in sd and role in ("in", "out"):
            assert sd[full].shape[dim] == width
    ids = torch.randint(3, 500, (2, 16))
    with torch.no_grad():
        out = student(input_ids=ids)
    assert torch.isfinite(out[0]).all()


def test_gemma3_layer_types_follow_the_kept_layers(tiny_model: Any) -> None:
    teacher = _teacher(tiny_model, "gemma3")
    teacher.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    plan = plan_student(teacher.config, student_layers=None, keep_every=None, width_ratio=1.0)
    student = build_student(teacher, plan)
    assert plan.layers == (0, 3)
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    assert student.config.num_hidden_layers == 2


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert-emb"])
def test_student_layers_are_the_teachers_chosen_layers(tiny_model: Any, name: str) -> None:
    import torch

    teacher = _teacher(tiny_model, name)
    plan = plan_student(teacher.config, student_layers=2, keep_every=None, width_ratio=1.0)
    student = build_student(teacher, plan)
    prefix = layer_prefix(teacher)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, value in s_sd.items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            source = f"{prefix}{plan.layers[int(j)]}.{rest}"
        else:
            source = key
        assert torch.equal(value, t_sd[source]), key
    # And not merely the first layers: the student's second layer differs from the teacher's second.
    probe = next(k for k in s_sd if k.startswith(f"{prefix}1.") and s_sd[k].dim() == 2)
    assert not torch.equal(s_sd[probe], t_sd[probe])


_IMPORTANT = [5, 17, 99]


def _boost(teacher: Any, name: str) -> None:
    """Make channels _IMPORTANT of layer 0 clearly the largest in every MLP matrix."""
    import torch

    prefix = layer_prefix(teacher)
    sd = teacher.state_dict()
    width = 256 if name == "gpt2" else 128
    with torch.no_grad():
        for key, (role, dim) in MLP_PARAMS[teacher.config.model_type].items():
            full = f"{prefix}0.{key}"
            if full not in sd or role == "bias":
                continue
            w = sd[full]
            for c in _IMPORTANT:
                if role == "fused":
                    w[c] *= 50
                    w[width + c] *= 50
                else:
                    w.select(dim, c).mul_(50)


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "bert-emb"])
def test_width_pruning_keeps_the_most_important_channels(tiny_model: Any, name: str) -> None:
    import torch

    teacher = _teacher(tiny_model, name)
    _boost(teacher, name)
    width = 256 if name == "gpt2" else 128
    plan = plan_student(teacher.config, student_layers=2, keep_every=None, width_ratio=3 / width)
    assert plan.intermediate_size == 3
    student = build_student(teacher, plan)
    prefix = layer_prefix(teacher)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    idx = torch.tensor(_IMPORTANT)
    for key, (role, dim) in MLP_PARAMS[teacher.config.model_type].items():
        full_t, full_s = f"{prefix}0.{key}", f"{prefix}0.{key}"
        if full_t not in t_sd:
            continue
        expected = t_sd[full_t]
        if role == "fused":
            expected = torch.cat([expected[:width][idx], expected[width:][idx]])
        else:
            expected = expected.index_select(dim, idx)
        assert torch.equal(s_sd[full_s], expected), key


def test_unsupported_architecture(tmp_path: Path) -> None:
    from edgekit.errors import UnsupportedError

    class Cfg:
        model_type = "t5"

    with pytest.raises(UnsupportedError):
        plan_student(Cfg(), student_layers=2, keep_every=None, width_ratio=1.0)

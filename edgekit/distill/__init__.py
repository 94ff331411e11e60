"""Knowledge distillation: SOURCE (teacher) → a smaller student trained to match it → an HF folder.

Loss (torchtune's KD recipe): (1 - kd_ratio)·CE(data) + kd_ratio·T²·KL(teacher_T ‖ student_T) for causal
LMs; encoders train on cosine distance to the teacher's last hidden states (per token, × hidden_weight) and
pooled embedding (+ KL on class logits for classifiers). Teacher outputs are computed on the fly.

The loop runs under HF accelerate's `Accelerator`: one CPU process here, a GPU when present, several
processes/GPUs/machines with `accelerate launch -m edgekit distill …`. Checkpoints (model, optimizer,
scheduler, RNG via `save_state`, plus the step) go to `OUT.checkpoints/`; SIGINT saves one and raises
KeyboardInterrupt after the current step.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from edgekit import progress
from edgekit.distill import loop
from edgekit.errors import InputError, UnsupportedError
from edgekit.source import SourceModel, load_source
from edgekit.specs import Fraction, PositiveFloat, PositiveInt, Spec
from edgekit.util import atomic_dir

log = logging.getLogger(__name__)


class DistillSpec(Spec):
    student_layers: PositiveInt | None = None  # evenly spaced, first and last kept; default: half
    keep_every: Annotated[int, Field(ge=2)] | None = None
    width_ratio: Fraction = 1.0  # MLP intermediate size kept (weight-magnitude importance)
    data: Annotated[tuple[Path, ...], Field(strict=False)] = ()  # text files (YAML gives strings), one sample per line; default: the built-in corpus's calibration half
    steps: PositiveInt = 200
    batch_size: PositiveInt = 4
    seq_len: Annotated[int, Field(ge=8, le=8192)] = 128
    lr: PositiveFloat = 1e-4
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    temperature: PositiveFloat = 2.0
    kd_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    hidden_weight: Annotated[float, Field(ge=0)] = 1.0
    checkpoint_every: Annotated[int, Field(ge=0)] = 100  # 0: only on SIGINT
    resume: bool = False
    seed: int = 0
    eval_tokens: PositiveInt = 512  # held-out tokens for KL-to-teacher before/after

    @model_validator(mode="after")
    def _one_depth_choice(self) -> DistillSpec:
        if self.student_layers is not None and self.keep_every is not None:
            raise ValueError("give either student_layers or keep_every, not both")
        return self


def checkpoint_root(out: Path) -> Path:
    return out.parent / f"{out.name}.checkpoints"


def distill(source: SourceModel, spec: DistillSpec, out: Path | str) -> SourceModel:
    """Build the student, train it against the teacher, and write an HF folder + distill.json to `out`."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    if source.format != "hf":
        raise UnsupportedError(f"{source.spec} is an ONNX model; distillation needs a PyTorch (HF) source")
    from edgekit.distill.student import build_student, plan_student

    # The schedule counts optimizer steps; accelerate would otherwise step it once per process.
    # cpu=True without a GPU so processes started by `accelerate launch`/torchrun join one gloo group.
    accelerator = Accelerator(step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
    set_seed(spec.seed)
    started = time.perf_counter()
    from transformers import AutoConfig

    # Plan from the config first: a bad --student-layers fails before the teacher's weights load.
    config = AutoConfig.from_pretrained(source.path, trust_remote_code=source.trust_remote_code)
    plan = plan_student(config, student_layers=spec.student_layers, keep_every=spec.keep_every,
                        width_ratio=spec.width_ratio)
    teacher = source.load_model().to(accelerator.device)
    teacher.requires_grad_(False)
    tokenizer = source.load_tokenizer()
    student = build_student(teacher, plan)
    batches = loop.Batches(loop.train_samples(source.task, tokenizer, spec), spec, accelerator)
    held_out = loop.eval_batch(source.task, tokenizer, spec.eval_tokens, spec.seq_len)
    before = loop.evaluate(teacher, student.to(accelerator.device), held_out, source.task, accelerator.device)
    log.info("held-out %s before training: %.4f", before["metric"], before["value"])

    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=0.0)
    scheduler = loop.make_scheduler(optimizer, spec)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    ckpt = loop.Checkpointer(accelerator, checkpoint_root(out), plan.as_dict())
    start_step = ckpt.restore() if spec.resume else 0
    state = loop.TrainState(accelerator, teacher, student, optimizer, scheduler, batches, spec, source.task)
    with progress.stage("distill", total=spec.steps) as st:
        st.advance(start_step)
        losses = state.run(start_step, st, ckpt)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(student)
    after = loop.evaluate(teacher, model, held_out, source.task, accelerator.device)
    log.info("held-out %s after training: %.4f", after["metric"], after["value"])
    record = _record(source, spec, plan, model, teacher, state, accelerator, start_step,
                     {"losses": losses, "before": before, "after": after, "started": started})
    if accelerator.is_main_process:
        _write_output(model, tokenizer, source, record, out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(checkpoint_root(out), ignore_errors=True)
    return load_source(str(out), task=source.task)


def _record(source: SourceModel, spec: DistillSpec, plan: Any, model: Any, teacher: Any, state: Any,
            accelerator: Any, start_step: int, run: dict[str, Any]) -> dict[str, Any]:
    """distill.json: provenance, student shape, losses, speed and the held-out metric before/after."""
    from edgekit.distill.student import parameter_count

    losses, before, after, started = run["losses"], run["before"], run["after"], run["started"]
    record = {
        "schema": "edgekit/distill@1",
        "teacher": source.fingerprint,
        "student": {"architecture": type(model).__name__, **plan.as_dict(),
                    "num_layers": len(plan.layers), "parameters": parameter_count(model)},
        "teacher_parameters": parameter_count(teacher),
        "spec": spec.model_dump(mode="json"),
        "steps": spec.steps,
        "resumed_from_step": start_step or None,
        "final_losses": losses,
        "loss_curve": [round(h["loss"], 5) for h in state.history],
        "tokens_per_s": state.tokens_per_s,
        "time_s": round(time.perf_counter() - started, 1),
        "train_time_s": round(state.train_seconds, 1),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "held_out": {"metric": before["metric"], "tokens": before["tokens"], "before": before["value"],
                     "after": after["value"], "text": "edgekit.data.eval_texts() (built-in corpus, eval half)"},
    }
    record["student"]["parameter_ratio"] = round(record["student"]["parameters"] / record["teacher_parameters"], 4)
    return record


def _write_output(model: Any, tokenizer: Any, source: SourceModel, record: dict[str, Any], out: Path) -> None:
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        gen = source.path / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, tmp / "generation_config.json")
        elif getattr(model, "generation_config", None) is not None and source.task == "text-generation":
            model.generation_config.save_pretrained(tmp)
        (tmp / "distill.json").write_text(json.dumps(record, indent=2, default=_json_default))


def _json_default(value: object) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def load_spec(**options: Any) -> DistillSpec:
    """DistillSpec from CLI/keyword options; invalid values raise ConfigError naming the option."""
    from edgekit.catalog import parse

    data = {k: v for k, v in options.items() if v is not None}
    if "data" in data:
        data["data"] = tuple(Path(p) for p in data["data"])
        for path in data["data"]:
            if not path.is_file():
                raise InputError(f"data file not found: {path}")
    return parse(DistillSpec, data, "distill options")

"""The pieces of the distillation loop: data, losses, held-out evaluation, checkpoints, the step loop.

Batches are a pure function of (seed, step, process index), so a resumed run sees exactly the batches an
uninterrupted one would have seen, without saving a data-loader state.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError

if TYPE_CHECKING:
    from types import FrameType

    import torch
    from torch import Tensor
    from torch.nn import Module
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler
    from transformers import PreTrainedTokenizerBase

    from edgekit.distill import DistillSpec
    from edgekit.progress import Stage

log = logging.getLogger(__name__)
STATE_FILE = "edgekit-state.json"


# ---------------------------------------------------------------- data


def _texts(spec: DistillSpec) -> list[str]:
    from edgekit.data import calibration_texts, read_text_file

    if spec.data:
        return [line for path in spec.data for line in read_text_file(path, what="distillation data file")]
    # The corpus's calibration half: bench's held-out text (eval_texts) must never be trained on.
    return calibration_texts(300)


def _pack(tokenizer: PreTrainedTokenizerBase, texts: list[str], seq_len: int) -> Any:
    """Concatenate tokenized texts (EOS between them) and cut into rows of seq_len tokens."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    rows = len(ids) // seq_len
    if rows < 1:
        raise InputError(f"the distillation data has {len(ids)} tokens, fewer than one --seq-len ({seq_len}); add text")
    return {"input_ids": torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)}


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], seq_len: int) -> Any:
    enc = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def train_samples(task: str, tokenizer: PreTrainedTokenizerBase, spec: DistillSpec) -> dict[str, Any]:
    texts = _texts(spec)
    batch: dict[str, Any] = (_pack(tokenizer, texts, spec.seq_len) if task == "text-generation"
                             else _encode(tokenizer, texts, spec.seq_len))
    return batch


def eval_batch(task: str, tokenizer: PreTrainedTokenizerBase, n_tokens: int, seq_len: int) -> dict[str, Any]:
    """Held-out text (edgekit.data.eval_texts, the built-in corpus's eval half) the student never trains on."""
    from edgekit.data import eval_texts

    texts = eval_texts()
    if task == "text-generation":
        packed = _pack(tokenizer, texts, seq_len)
        rows = max(1, n_tokens // seq_len)
        return {"input_ids": packed["input_ids"][:rows]}
    batch: dict[str, Any] = _encode(tokenizer, texts[: max(8, n_tokens // seq_len)], seq_len)
    return batch


class Batches:
    """Row indices per (step, process): a fresh seeded permutation per pass over the data."""

    def __init__(self, samples: dict[str, Any], spec: DistillSpec, accelerator: Any) -> None:
        self.samples = samples
        self.n = int(samples["input_ids"].shape[0])
        self.batch_size = spec.batch_size
        self.seed = spec.seed
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.device = accelerator.device
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int) -> Tensor:
        import torch

        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        perm: Tensor = self._perms[epoch]
        return perm

    def __call__(self, step: int) -> dict[str, Any]:
        import torch

        first = (step * self.world + self.rank) * self.batch_size
        idx = torch.stack([self._perm(g // self.n)[g % self.n] for g in range(first, first + self.batch_size)])
        return {k: v[idx].to(self.device) for k, v in self.samples.items()}


# ---------------------------------------------------------------- losses and evaluation


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Mean over positions of KL(teacher_T ‖ student_T), scaled by T² so gradients keep their size."""
    import torch.nn.functional as F

    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s_log = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1)
    return kl.mean() * temperature**2


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _pooled(hidden: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def losses(task: str, s_out: Any, t_out: Any, batch: dict[str, Any], spec: DistillSpec) -> dict[str, Any]:
    """{'loss': tensor to minimise, 'ce'/'kd'/'hidden': detached parts}."""
    import torch.nn.functional as F

    if task == "text-generation":
        ids = batch["input_ids"]
        logits = s_out.logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        kd = forward_kl(logits, t_out.logits, spec.temperature)
        return {"loss": (1 - spec.kd_ratio) * ce + spec.kd_ratio * kd, "ce": ce, "kd": kd}
    mask = batch.get("attention_mask")
    s_h, t_h = _last_hidden(s_out), _last_hidden(t_out)
    hidden = _masked_mean(1 - F.cosine_similarity(s_h, t_h, dim=-1), mask)
    if task == "feature-extraction":
        kd = (1 - F.cosine_similarity(_pooled(s_h, mask), _pooled(t_h, mask), dim=-1)).mean()
    else:
        kd = forward_kl(s_out.logits, t_out.logits, spec.temperature)
    return {"loss": kd + spec.hidden_weight * hidden, "kd": kd, "hidden": hidden}


def _last_hidden(out: Any) -> Any:
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    return out.hidden_states[-1]


def run_model(model: Module, batch: dict[str, Any], task: str) -> Any:
    if task == "text-generation":
        return model(**batch, use_cache=False)
    return model(**batch, output_hidden_states=task == "text-classification")


def evaluate(teacher: Module, student: Module, batch: dict[str, Any], task: str, device: torch.device | str) -> dict[str, Any]:
    """Causal LM / classifier: mean KL(teacher ‖ student) at T=1; embeddings: mean cosine of pooled outputs."""
    import torch
    import torch.nn.functional as F

    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = student.training
    student.eval()
    with torch.no_grad():
        t_out, s_out = run_model(teacher, batch, task), run_model(student, batch, task)
    student.train(was_training)
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    if task == "feature-extraction":
        cos = F.cosine_similarity(_pooled(s_out.last_hidden_state, mask), _pooled(t_out.last_hidden_state, mask), dim=-1)
        return {"metric": "cosine_mean", "value": float(cos.mean()), "tokens": tokens}
    return {"metric": "kl_mean", "value": float(forward_kl(s_out.logits, t_out.logits, 1.0)), "tokens": tokens}


def make_scheduler(optimizer: Optimizer, spec: DistillSpec) -> LRScheduler:
    from transformers import get_cosine_schedule_with_warmup

    scheduler: LRScheduler = get_cosine_schedule_with_warmup(optimizer, int(spec.warmup_ratio * spec.steps), spec.steps)
    return scheduler


# ---------------------------------------------------------------- checkpoints


class Checkpointer:
    """`root/step-N/`: accelerate's save_state (model, optimizer, scheduler, RNG) + the step and student plan."""

    def __init__(self, accelerator: Any, root: Path, plan: dict[str, Any]) -> None:
        self.accelerator = accelerator
        self.root = root
        self.plan = plan

    def latest(self) -> Path | None:
        found = sorted((p for p in self.root.glob("step-*") if (p / STATE_FILE).is_file()),
                       key=lambda p: int(p.name.split("-")[1]))
        return found[-1] if found else None

    def save(self, step: int) -> Path:
        acc = self.accelerator
        tmp, final = self.root / f".step-{step}.tmp", self.root / f"step-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "plan": self.plan}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.root.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint at step %d: %s", step, final)
        acc.wait_for_everyone()
        return final

    def restore(self) -> int:
        found = self.latest()
        if found is None:
            raise InputError(f"--resume: no checkpoint in {self.root}; run without --resume to start over")
        state = json.loads((found / STATE_FILE).read_text())
        if state.get("plan") != self.plan:
            raise InputError(
                f"--resume: the checkpoint in {found} is for student {state.get('plan')}, not {self.plan}; "
                "use the same --student-layers/--keep-every/--width-ratio or drop --resume"
            )
        self.accelerator.load_state(str(found))
        log.info("resumed from %s (step %d)", found, state["step"])
        return int(state["step"])


# ---------------------------------------------------------------- the loop


class _Interrupt:
    """First SIGINT: finish the step, checkpoint, stop. Second SIGINT: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class TrainState:
    def __init__(self, accelerator: Any, teacher: Module, student: Module, optimizer: Any, scheduler: Any,
                 batches: Batches, spec: DistillSpec, task: str) -> None:
        self.acc, self.teacher, self.student = accelerator, teacher, student
        self.optimizer, self.scheduler, self.batches = optimizer, scheduler, batches
        self.spec, self.task = spec, task
        self.tokens = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, float]] = []

    @property
    def tokens_per_s(self) -> float | None:
        return round(self.tokens / self.train_seconds, 1) if self.train_seconds > 0 else None

    def step(self, step: int) -> dict[str, float]:
        import torch

        batch = self.batches(step)
        with torch.no_grad():
            t_out = run_model(self.teacher, batch, self.task)
        parts = losses(self.task, run_model(self.student, batch, self.task), t_out, batch, self.spec)
        self.acc.backward(parts["loss"])
        self.acc.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mask = batch.get("attention_mask")
        self.tokens += (int(mask.sum()) if mask is not None else batch["input_ids"].numel()) * self.acc.num_processes
        values = {k: float(v.detach()) for k, v in parts.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise InputError(f"distillation diverged at step {step + 1} (loss {values['loss']}); lower --lr")
        return values

    def run(self, start: int, st: Stage, ckpt: Checkpointer) -> dict[str, float]:
        """Train from `start` to spec.steps; returns the parts of the loss averaged over the last 10 steps."""
        self.student.train()
        with _Interrupt() as interrupt:
            for step in range(start, self.spec.steps):
                t0 = time.perf_counter()
                values = self.step(step)
                self.train_seconds += time.perf_counter() - t0
                self.history.append(values)
                st.advance(info=self._info(values))
                if (step + 1) % 10 == 0:  # a trace in logs for runs without a terminal (nohup, --json)
                    log.info("step %d/%d %s", step + 1, self.spec.steps, self._info(values))
                done = step + 1
                if self._stop_requested(interrupt):
                    ckpt.save(done)
                    raise KeyboardInterrupt(f"interrupted at step {done}; checkpoint saved, continue with --resume")
                every = self.spec.checkpoint_every
                if every and done % every == 0 and done < self.spec.steps:
                    ckpt.save(done)
        tail = self.history[-10:]
        return {k: round(sum(v[k] for v in tail) / len(tail), 5) for k in tail[0]} if tail else {}

    def _info(self, values: dict[str, float]) -> str:
        extra = f"ce {values['ce']:.3f}" if "ce" in values else f"hidden {values['hidden']:.4f}"
        return f"loss {values['loss']:.3f} kd {values['kd']:.4f} {extra} {self.tokens_per_s or 0:.0f} tok/s"

    def _stop_requested(self, interrupt: _Interrupt) -> bool:
        if self.acc.num_processes == 1:
            return interrupt.requested
        import torch

        # Every process must agree, or one would wait forever in save_state for the others.
        flag = torch.tensor([1.0 if interrupt.requested else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() > 0)

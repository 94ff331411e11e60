"""ONNX vs PyTorch on the same inputs: the check optimum only warns about (optimum #1755), here it fails.

Generation models are compared on a prompt pass and one decode step through the KV cache; encoders on their
output for a short batch. Beyond tolerance → ParityError naming the worst tensor and its values.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ParityError
from edgekit.source import SourceModel

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

PARITY_TEXT = "The quick brown fox jumps over the lazy dog while the edge device measures its budget"
# fp32 exports differ from eager PyTorch by ~1e-5 of the logit scale; fusions add a little; a broken graph, far more.
REL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    tolerance: float
    top1_agreement: float | None
    worst_tensor: str
    worst_index: list[int]
    onnx_value: float
    torch_value: float
    n_positions: int

    @property
    def passed(self) -> bool:
        top1_ok = self.top1_agreement is None or self.top1_agreement >= 1.0 or self.max_abs_diff <= self.tolerance
        return self.max_abs_diff <= self.tolerance and top1_ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def message(self, stage: str) -> str:
        idx = ",".join(map(str, self.worst_index))
        top1 = f", top-1 agreement {self.top1_agreement:.3f}" if self.top1_agreement is not None else ""
        return (
            f"ONNX {stage} disagrees with PyTorch: {self.worst_tensor}[{idx}] = {self.onnx_value:.5g} vs "
            f"{self.torch_value:.5g} (max abs diff {self.max_abs_diff:.3g} > tolerance {self.tolerance:.3g}{top1})"
        )


def _compare(pairs: list[tuple[str, np.ndarray, np.ndarray]], top1: bool) -> ParityResult:
    worst: tuple[float, str, list[int], float, float] = (-1.0, "", [], 0.0, 0.0)
    scale = 1.0
    agree, total = 0, 0
    for name, onnx_arr, torch_arr in pairs:
        onnx_arr = onnx_arr.astype(np.float32)
        torch_arr = torch_arr.astype(np.float32)
        if onnx_arr.shape != torch_arr.shape:
            raise ParityError(f"ONNX output {name} has shape {onnx_arr.shape}, PyTorch {torch_arr.shape}")
        diff = np.abs(onnx_arr - torch_arr)
        diff = np.where(np.isnan(diff), np.inf, diff)
        scale = max(scale, float(np.abs(torch_arr).max()))
        i = np.unravel_index(int(np.argmax(diff)), diff.shape)
        if float(diff[i]) > worst[0]:
            worst = (float(diff[i]), name, [int(x) for x in i], float(onnx_arr[i]), float(torch_arr[i]))
        if top1:
            a, b = onnx_arr.reshape(-1, onnx_arr.shape[-1]), torch_arr.reshape(-1, torch_arr.shape[-1])
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0]
    return ParityResult(
        max_abs_diff=worst[0], tolerance=REL_TOLERANCE * scale, top1_agreement=(agree / total) if top1 else None,
        worst_tensor=worst[1], worst_index=worst[2], onnx_value=worst[3], torch_value=worst[4],
        n_positions=total or int(sum(p[2].shape[0] * p[2].shape[1] for p in pairs)),
    )


@dataclass(frozen=True)
class TorchReference:
    """PyTorch's outputs on the parity inputs, computed once so the model can be freed before any ONNX session."""

    task: str
    ids: np.ndarray
    outputs: dict[str, np.ndarray]
    next_ids: np.ndarray | None = None  # generation: the token the decode step feeds (PyTorch's argmax)


def torch_reference(source: SourceModel, model: Any = None, tokenizer: Any = None) -> TorchReference:
    """PyTorch's parity outputs: a prompt pass and one cached decode step (decoders), or the encoder's output."""
    import torch

    model = model if model is not None else source.load_model()
    tokenizer = tokenizer if tokenizer is not None else source.load_tokenizer()
    ids = np.asarray(tokenizer(PARITY_TEXT)["input_ids"], dtype=np.int64)[None, :]
    with torch.inference_mode():
        if source.task == "text-generation":
            out = model(torch.from_numpy(ids), use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            step = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            return TorchReference(source.task, ids, {"logits[prompt]": out.logits.numpy().copy(),
                                                     "logits[decode]": step.logits.numpy().copy()}, nxt.numpy().copy())
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(np.ones_like(ids)))
        name = "logits" if source.task == "text-classification" else "last_hidden_state"
        return TorchReference(source.task, ids, {name: getattr(out, name).numpy().copy()})


def check_parity(source: SourceModel, model_file: Path, *, model: Any = None, tokenizer: Any = None,
                 stage: str = "export", reference: TorchReference | None = None) -> ParityResult:
    """Compare `model_file` with the PyTorch source (or its precomputed `reference`); raise ParityError beyond tolerance."""
    from edgekit.runtime import Decoder, Encoder, make_session

    ref = reference if reference is not None else torch_reference(source, model, tokenizer)
    session = make_session(model_file, prepack=False)  # it only checks numbers
    ids = ref.ids
    if ref.task == "text-generation" and ref.next_ids is not None:
        decoder = Decoder(session)
        logits, cache = decoder.forward(ids, None, 0)
        step_logits, _ = decoder.forward(ref.next_ids, cache, ids.shape[1])
        pairs = [("logits[prompt]", logits, ref.outputs["logits[prompt]"]),
                 ("logits[decode]", step_logits, ref.outputs["logits[decode]"])]
        result = _compare(pairs, top1=True)
    else:
        mask = np.ones_like(ids)
        got = Encoder(session, "raw").session.run(None, _encoder_feeds(session, ids, mask))[0]
        name, want = next(iter(ref.outputs.items()))
        result = _compare([(name, got, want)], top1=ref.task == "text-classification")
    log.info("parity (%s): max abs diff %.3g, top-1 %s", stage, result.max_abs_diff, result.top1_agreement)
    if not result.passed:
        raise ParityError(result.message(stage), hint="re-export with --opset 17 or report the architecture")
    return result


def _encoder_feeds(session: InferenceSession, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds

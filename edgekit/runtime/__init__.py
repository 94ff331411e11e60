"""Torch-free inference over an edgekit model folder or bundle: onnxruntime, numpy and tokenizers only.

This is what a device runs (`edgekit run`), and what bench and parity drive, so the generation loop that is
measured is the one that ships. Input/output names and shapes are read from the session (optimum's
decoder-with-past layout), never hard-coded per architecture.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
KV_CACHE_KEY = "edgekit.kv_cache"  # model metadata: "shared-buffer" where the graph supports it
# Fused graphs compute the lm_head for the last N positions fed here (0: all); generation feeds 1.
LOGITS_TO_KEEP = "num_logits_to_keep"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


# onnxruntime's CPU SkipLayerNormalization kernel is slower than the Add + LayerNormalization it replaces:
# 24 of 127 ms in a MiniLM int8 batch (8x128, one thread) vs 6 ms unfused; 121 -> 102 ms per batch overall
# (benchmarks/README.md, "MiniLM"). Graphs that carry the fused op (edgekit's decoder writer) keep it.
CPU_DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)


def make_session(model_file: Path, *, threads: int = 1, providers: list[str] | tuple[str, ...] | None = None,
                 prepack: bool = True) -> InferenceSession:
    """`prepack=False`: weights are not copied into the kernels' packed layouts at load (a MatMul packs them per
    run instead): the same outputs for ~30 % less memory (SmolLM2 fp32: 789 vs 1,089 MiB), for sessions that check
    numbers and time nothing. A prepacked session's memory is backed with huge pages where the OS allows
    (edgekit.runtime.hugepages: 1.2-1.5x SmolLM2 int8/int4 decode on x86)."""
    import onnxruntime as ort

    from edgekit.runtime import hugepages

    opts = ort.SessionOptions()
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors only: fused graphs carry one deliberate overridable initializer (num_logits_to_keep), which
    # onnxruntime warns about on every load.
    opts.log_severity_level = 3
    available = set(ort.get_available_providers())
    wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    disabled = list(CPU_DISABLED_OPTIMIZERS) if wanted == ["CPUExecutionProvider"] else []
    before = hugepages.anonymous_mappings() if prepack and hugepages.enabled() else None
    session = ort.InferenceSession(str(model_file), opts, providers=wanted, disabled_optimizers=disabled)
    if before is not None:
        hugepages.collapse_new(before)
    return session


def load_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class GenerationResult:
    tokens: list[int]
    ttft_s: float
    step_s: list[float] = field(default_factory=list)


class Decoder:
    """A causal LM session with KV cache: prefill once, then one token per step."""

    def __init__(self, session: InferenceSession) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_names = set(inputs)
        self.past: list[tuple[str, list[Any], Any]] = []
        for name, info in inputs.items():
            if _PAST.fullmatch(name):
                self.past.append((name, list(info.shape), _DTYPES.get(info.type, np.float32)))
        self.past.sort(key=lambda p: (int(_PAST.fullmatch(p[0]).group(1)), p[0]))  # type: ignore[union-attr]
        outs = [o.name for o in session.get_outputs()]
        self.output_names = outs
        self.present = {n.replace("present", "past_key_values", 1): n for n in outs if n.startswith("present")}
        meta = session.get_modelmeta().custom_metadata_map or {}
        # GroupQueryAttention graphs (edgekit.fused) can update one cache buffer in place: no copy per step.
        self.shared_kv = meta.get(KV_CACHE_KEY) == "shared-buffer" and bool(self.past) and bool(self.present)
        overridable = {i.name for i in session.get_overridable_initializers()}
        self.keeps_last = LOGITS_TO_KEEP in self.input_names or LOGITS_TO_KEEP in overridable
        self.binds_keep_last = LOGITS_TO_KEEP in self.input_names  # graphs where it was a required input

    @property
    def with_past(self) -> bool:
        return bool(self.past)

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for name, shape, dtype in self.past:
            dims = [batch if i == 0 else (0 if not isinstance(d, int) else d) for i, d in enumerate(shape)]
            feeds[name] = np.zeros(dims, dtype=dtype)
        return feeds

    def forward(self, ids: np.ndarray, past: dict[str, np.ndarray] | None, past_len: int, *,
                last_only: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [batch, seq, vocab] for `ids` after `past_len` cached tokens ([batch, 1, vocab] with `last_only`
        where the graph can), and the new cache."""
        batch, seq = ids.shape
        feeds: dict[str, np.ndarray] = {"input_ids": ids.astype(np.int64)}
        if self.keeps_last:
            feeds[LOGITS_TO_KEEP] = np.asarray([1 if last_only else 0], dtype=np.int64)
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((batch, past_len + seq), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)).copy()
        if self.past:
            feeds.update(past if past is not None else self.empty_past(batch))
        outputs = self.session.run(None, feeds)
        by_name = dict(zip(self.output_names, outputs))  # noqa: B905 (the device runner runs on Python 3.9+)
        cache = {p: by_name[o] for p, o in self.present.items()}
        return by_name["logits"], cache

    def logits(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """Full-sequence logits [seq, vocab] of one sequence, no cache (fidelity windows)."""
        arr = np.asarray(ids, dtype=np.int64)[None, :]
        logits, _ = self.forward(arr, None, 0)
        last: np.ndarray = logits[0].astype(np.float32)
        return last

    def tokens(self, prompt: list[int], max_new_tokens: int, *, eos: set[int] | None = None, temperature: float = 0.0,
               top_k: int = 0, seed: int = 0) -> Iterator[int]:
        """Yield each new token as soon as it is picked (prefill once, then one KV-cache step per token)."""
        rng = np.random.default_rng(seed)
        eos = eos or set()
        advance = _SharedCache(self, len(prompt) + max_new_tokens) if self.shared_kv else _NumpyCache(self)
        logits = advance(prompt)
        for step in range(max_new_tokens):
            tok = _pick(logits[0, -1], temperature, top_k, rng)
            yield tok
            if tok in eos or step == max_new_tokens - 1:
                return
            logits = advance([tok])

    def generate(self, prompt: list[int], max_new_tokens: int, *, on_token: Callable[[int], None] | None = None,
                 **kwargs: Any) -> GenerationResult:
        """All of `tokens`, timed: TTFT (prefill + first pick) and each later step, callbacks excluded."""
        result = GenerationResult([], 0.0)
        stream = self.tokens(prompt, max_new_tokens, **kwargs)
        t0 = time.perf_counter()
        for tok in stream:
            elapsed = time.perf_counter() - t0
            if result.tokens:
                result.step_s.append(elapsed)
            else:
                result.ttft_s = elapsed
            result.tokens.append(tok)
            if on_token is not None:
                on_token(tok)
            t0 = time.perf_counter()
        return result


class _NumpyCache:
    """The cache as numpy arrays fed back each step (any decoder-with-past graph); without a cache, re-read all."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.seen: list[int] = []
        self.cache: dict[str, np.ndarray] | None = None

    def __call__(self, ids: list[int]) -> np.ndarray:
        if self.decoder.with_past:
            logits, self.cache = self.decoder.forward(np.asarray([ids], dtype=np.int64), self.cache, len(self.seen),
                                                      last_only=True)
        else:
            logits, _ = self.decoder.forward(np.asarray([self.seen + ids], dtype=np.int64), None, 0, last_only=True)
        self.seen += ids
        return logits


class _SharedCache:
    """IO binding with one [batch, kv_heads, max_len, head_dim] buffer per cache tensor, bound as both past and
    present: GroupQueryAttention appends in place (its share-buffer mode), so no cache is copied per step.
    Measured on SmolLM2 (128 new tokens): 3-5 % faster decode than feeding numpy caches, identical tokens."""

    def __init__(self, decoder: Decoder, max_len: int) -> None:
        import onnxruntime as ort

        self.session = decoder.session
        self.io = self.session.io_binding()
        self.decoder = decoder
        self.io.bind_output("logits")  # first, so get_outputs()[0] is always the logits
        self.buffers: dict[str, np.ndarray] = {}
        for name, shape, dtype in decoder.past:
            self.buffers[name] = np.zeros([1, shape[1], max_len, shape[3]], dtype=dtype)
            buf = ort.OrtValue.ortvalue_from_numpy(self.buffers[name])  # shares the array's memory on the CPU
            self.io.bind_ortvalue_input(name, buf)
            self.io.bind_ortvalue_output(decoder.present[name], buf)
        vocab = self.session.get_outputs()[0].shape[-1]
        self.step_logits = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, int(vocab)), dtype=np.float32))
        self.mask = np.ones((1, max_len), dtype=np.int64)
        self.length = 0
        if decoder.binds_keep_last:  # bound once: every run of this binding wants the last position's logits only
            self.io.bind_cpu_input(LOGITS_TO_KEEP, np.ones(1, dtype=np.int64))
        # An overridable num_logits_to_keep (default 0, all positions) cannot be bound: the prefill goes through
        # plain feeds instead, and its cache (prompt-long, a few MB) is copied once into the shared buffers.
        self.prefill_by_feeds = decoder.keeps_last and not decoder.binds_keep_last

    def __call__(self, ids: list[int]) -> np.ndarray:
        if self.prefill_by_feeds and self.length == 0 and len(ids) > 1:
            logits, cache = self.decoder.forward(np.asarray([ids], dtype=np.int64), None, 0, last_only=True)
            for name, arr in cache.items():
                self.buffers[name][:, :, : arr.shape[2], :] = arr
            self.length = len(ids)
            return logits
        self.length += len(ids)
        if len(ids) == 1:  # decode steps reuse one logits buffer
            self.io.bind_ortvalue_output("logits", self.step_logits)
        else:
            self.io.bind_output("logits")
        self.io.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        self.io.bind_cpu_input("attention_mask", self.mask[:, : self.length])
        self.session.run_with_iobinding(self.io)
        return np.asarray(self.io.get_outputs()[0].numpy())


def _pick(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if top_k > 0:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < cutoff, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


class Encoder:
    """Feature extraction (mean-pooled, L2-normalised, like sentence-transformers) or classification."""

    def __init__(self, session: InferenceSession, task: str) -> None:
        self.session = session
        self.task = task
        self.input_names = {i.name for i in session.get_inputs()}

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        out: np.ndarray = self.session.run(None, feeds)[0].astype(np.float32)
        if self.task == "text-classification":
            return out
        return pool(out, mask)


def pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Attention-masked mean pooling then L2 normalisation ([batch, dim])."""
    if hidden.ndim == 2:  # already pooled (sentence_embedding output)
        pooled = hidden
    else:
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    unit: np.ndarray = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return unit


class Model:
    """A model folder (export, compress or bundle) with its tokenizer: the object `edgekit run` drives."""

    def __init__(self, folder: Path | str, *, threads: int = 1, providers: list[str] | tuple[str, ...] | None = None) -> None:
        self.folder = Path(folder)
        record = _json(self.folder / "edgekit.json") or _json(self.folder / "compress.json") or _json(self.folder / "export.json")
        self.config = _json(self.folder / "config.json")
        self.generation_config = _json(self.folder / "generation_config.json")
        self.task = str(record.get("task") or _task_from_config(self.config))  # records always name it
        self.session = make_session(self.folder / "model.onnx", threads=threads, providers=providers)
        self.tokenizer = load_tokenizer(self.folder)
        _check_tokenizer(self.folder, record)

    @property
    def eos_ids(self) -> set[int]:
        eos = self.generation_config.get("eos_token_id", self.config.get("eos_token_id"))
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list) else {int(eos)}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def stream(self, prompt: str, max_new_tokens: int = 32, **kwargs: Any) -> Iterator[str]:
        """Yield decoded text pieces as tokens arrive (greedy unless temperature > 0)."""
        from edgekit.errors import InputError

        ids = self.encode(prompt)
        limit = int(self.config.get("max_position_embeddings") or 0)
        if limit and len(ids) + max_new_tokens > limit:
            raise InputError(f"prompt ({len(ids)} tokens) + max new tokens ({max_new_tokens}) exceeds the model's "
                             f"{limit} positions; shorten the prompt or lower --max-new-tokens")
        produced: list[int] = []
        shown = ""
        for tok in Decoder(self.session).tokens(ids, max_new_tokens, eos=self.eos_ids, **kwargs):
            produced.append(tok)
            # Decode the whole continuation each time: one token can be half a UTF-8 character or a word piece.
            text = self.tokenizer.decode(produced, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half a UTF-8 character so far: wait for the rest
                continue
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
            shown = text

    def embed_or_classify(self, texts: list[str], max_length: int = 256) -> np.ndarray:
        encs = [self.tokenizer.encode(t).ids[:max_length] for t in texts]
        width = max(len(e) for e in encs)
        pad = int(self.config.get("pad_token_id") or 0)
        ids = np.full((len(encs), width), pad, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return Encoder(self.session, self.task).run(ids, mask)

    def labels(self, logits: np.ndarray) -> list[str]:
        id2label = self.config.get("id2label") or {}
        # transformers omits the default id2label when saving; its default names are LABEL_<i>.
        return [str(id2label.get(str(int(i)), f"LABEL_{int(i)}")) for i in logits.argmax(-1)]


def _check_tokenizer(folder: Path, record: dict[str, Any]) -> None:
    """A bundle prints through the tokenizer its fidelity figures were computed with, or not at all."""
    import hashlib

    from edgekit.errors import BundleError

    want = (record.get("tokenizer") or {}).get("sha256")
    if want and hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest() != want:
        raise BundleError(f"{folder}/tokenizer.json is not the tokenizer this bundle was checked with "
                          "(sha256 differs from edgekit.json); rebuild the bundle")


def _task_from_config(config: dict[str, Any]) -> str:
    # Only for a folder whose record has no task: the one detection, imported here to keep the runtime light.
    from edgekit.specs import detect_task

    return detect_task(config)

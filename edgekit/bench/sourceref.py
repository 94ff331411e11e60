"""The source's side of the fidelity checks, computed once and cached: what the PyTorch source outputs on the eval
tokens (and its greedy continuations for the decode check), so every variant of one source is compared against
one set of numbers without loading the source again. llama.cpp's `--kl-divergence-base` does the same.

Exact, not compressed: the full float32 logits per predicted position, the same arrays the bench used to take
from the model directly, so figures computed from the cache are bit-identical to figures computed live. That is
large (SmolLM2-135M, default 2,048 eval tokens: ~0.4 GB of logits + ~50 MB of decode logits), so entries are
.npy files read memory-mapped and the cache keeps only the newest KEEP entries. The compact top-k
`reference.npz` a bundle ships (edgekit.bundle.reference) is built from the same cached logits.

Cache: `$EDGEKIT_CACHE/source-outputs/<key>/`, key = hash of the source weights, tokenizer and config files, the
eval text, the eval settings (tokens, window rules, decode prompts), torch and transformers versions and FORMAT.
Safe to delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit import progress

if TYPE_CHECKING:
    from edgekit.source import SourceModel

log = logging.getLogger(__name__)

FORMAT = "edgekit/source-outputs@1"
KEEP = 6
MAX_SIDE_FILE_BYTES = 64 << 20  # tokenizer and config files count in the key; big side files (weights) do not


@dataclass(frozen=True)
class SourceOutputs:
    """One cache entry (picklable: a folder path and its meta travel to workers; the arrays are read there)."""

    path: Path
    meta: dict[str, Any]
    hit: bool = False
    seconds: float = 0.0

    def array(self, name: str) -> np.ndarray:
        arr: np.ndarray = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return arr

    @property
    def key(self) -> str:
        return self.path.name

    def windows(self) -> list[tuple[int, list[int]]]:
        """(document index, token window) pairs, as `bench.fidelity.eval_windows` gave them."""
        ids = self.array("ids").tolist()
        out, start = [], 0
        for doc, length in self.meta["windows"]:
            out.append((int(doc), ids[start:start + length]))
            start += length
        return out

    def window_logits(self) -> Iterator[np.ndarray]:
        """Per window, the source's logits at its predicting positions ([len - 1, vocab], float32): a copy of one
        window at a time, the file mapped only while it is copied (mapped pages count in RSS: 0.4 GB for SmolLM2
        once every window had been read through one mapping)."""
        start = 0
        for _, length in self.meta["windows"]:
            yield np.array(self.array("logits")[start:start + length - 1])
            start += length - 1

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "hit": self.hit, "path": str(self.path), "seconds": round(self.seconds, 2),
                "format": FORMAT}


def _side_files(source: SourceModel) -> list[Path]:
    weights = set(source.weight_files)
    return sorted(p for p in Path(source.path).iterdir()
                  if p.is_file() and p not in weights and p.stat().st_size <= MAX_SIDE_FILE_BYTES)


def _eval_text_sha256(eval_data: Path | None) -> str:
    from edgekit import data

    if eval_data is not None:
        return hashlib.sha256(Path(eval_data).read_bytes()).hexdigest()
    return hashlib.sha256("\x00".join(data.eval_documents()).encode()).hexdigest()


def settings(source: SourceModel, eval_data: Path | None, eval_tokens: int, decode_prompts: int,
             new_tokens: int) -> dict[str, Any]:
    """Everything the source's outputs depend on; its hash names the cache entry."""
    from importlib.metadata import version

    from edgekit.bench import decode, fidelity

    side = hashlib.sha256()
    for p in _side_files(source):
        side.update(p.name.encode() + b"\x00" + p.read_bytes())
    return {"format": FORMAT, "source_sha256": source.fingerprint["sha256"], "side_files_sha256": side.hexdigest(),
            "task": source.task, "eval_sha256": _eval_text_sha256(eval_data), "eval_tokens": eval_tokens,
            "window": fidelity.WINDOW, "min_windows": fidelity.MIN_WINDOWS, "encoder_max_tokens": fidelity.ENCODER_MAX_TOKENS,
            "decode": {"prompts": decode_prompts if source.task == "text-generation" else 0,
                       "prompt_tokens": decode.DEFAULT_PROMPT_TOKENS, "new_tokens": new_tokens},
            "torch": version("torch"), "transformers": version("transformers")}


def source_outputs(source: SourceModel, eval_data: Path | None, eval_tokens: int, decode_prompts: int, *,
                   new_tokens: int | None = None) -> SourceOutputs:
    """The cached entry for these settings; computed (PyTorch, 1 thread) and stored on a miss."""
    from edgekit.bench.decode import DEFAULT_NEW_TOKENS
    from edgekit.util import cache_dir, release_memory

    t0 = time.monotonic()
    new_tokens = DEFAULT_NEW_TOKENS if new_tokens is None else new_tokens
    fields = settings(source, eval_data, eval_tokens, decode_prompts, new_tokens)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    root = cache_dir() / "source-outputs"
    final = root / key
    meta_file = final / "meta.json"
    if meta_file.is_file():
        os.utime(final)  # newest use first when pruning
        log.info("source outputs: cache hit %s", final)
        return SourceOutputs(final, json.loads(meta_file.read_text()), hit=True, seconds=time.monotonic() - t0)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        meta = _compute(source, eval_data, eval_tokens, (decode_prompts, new_tokens), tmp)
        (tmp / "meta.json").write_text(json.dumps({**meta, "settings": fields}, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:  # another process stored the same entry first: its arrays are the same numbers
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root)
    release_memory()  # the PyTorch model's heap, before the variant's session is opened on it
    return SourceOutputs(final, json.loads(meta_file.read_text()), hit=False, seconds=time.monotonic() - t0)


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def _compute(source: SourceModel, eval_data: Path | None, eval_tokens: int, decode: tuple[int, int],
             dest: Path) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and the fastest on small hosts
    try:
        model, tokenizer = source.load_model(), source.load_tokenizer()
        with torch.inference_mode():
            if source.task == "text-generation":
                meta = _causal(model, tokenizer, source.config, eval_data, eval_tokens, dest)
                meta["decode"] = _decode(model, tokenizer, source.config, eval_data, decode, dest)
                return meta
            return _encoder(model, tokenizer, source.task, eval_data, eval_tokens, dest)
    finally:
        torch.set_num_threads(threads)


def _causal(model: Any, tokenizer: Any, config: dict[str, Any], eval_data: Path | None, eval_tokens: int,
            dest: Path) -> dict[str, Any]:
    import torch

    from edgekit.bench.fidelity import eval_windows

    wins = eval_windows(tokenizer, config, eval_data, eval_tokens)
    rows = sum(len(w) - 1 for _, w in wins)
    # Written window by window to the file, not through a mapping (its dirty pages count in RSS until unmapped):
    # 0.4 GB for SmolLM2 never sits in memory at once. The same file np.lib.format.open_memmap writes.
    with open(dest / "logits.npy", "wb") as f, progress.stage("source outputs", total=len(wins)) as st:
        for i, (_, win) in enumerate(wins):
            out = np.ascontiguousarray(model(torch.tensor([win], dtype=torch.long)).logits[0].float().numpy()[:-1],
                                       dtype=np.float32)
            if i == 0:
                header = {"descr": np.lib.format.dtype_to_descr(out.dtype), "fortran_order": False,
                          "shape": (rows, out.shape[-1])}
                np.lib.format.write_array_header_1_0(f, header)
            f.write(out.data)
            st.advance()
    np.save(dest / "ids.npy", np.asarray([t for _, w in wins for t in w], dtype=np.int64))
    return {"task": "text-generation", "windows": [[d, len(w)] for d, w in wins], "positions": rows}


def _decode(model: Any, tokenizer: Any, config: dict[str, Any], eval_data: Path | None, decode: tuple[int, int],
            dest: Path) -> dict[str, Any] | None:
    from edgekit.bench.decode import DEFAULT_PROMPT_TOKENS, decode_prompts, source_greedy

    prompts, new_tokens = decode
    if prompts <= 0:
        return None
    max_pos = int(config.get("max_position_embeddings") or config.get("n_positions") or 1 << 20)
    prompt_tokens = max(1, min(DEFAULT_PROMPT_TOKENS, max_pos - new_tokens))
    chosen = decode_prompts(tokenizer, eval_data, prompts, prompt_tokens)
    if not chosen:
        return {"prompts": 0, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}
    tokens, logits = [], None
    with progress.stage("source outputs: decode", total=len(chosen)) as st:
        for i, prompt in enumerate(chosen):
            toks, rows = source_greedy(model, prompt, new_tokens)
            if logits is None:
                logits = np.lib.format.open_memmap(dest / "decode_logits.npy", mode="w+", dtype=np.float32,
                                                   shape=(len(chosen), *rows.shape))
            logits[i] = rows
            tokens.append(toks)
            st.advance()
    assert logits is not None
    logits.flush()
    del logits
    np.save(dest / "decode_prompts.npy", np.asarray(chosen, dtype=np.int64))
    np.save(dest / "decode_tokens.npy", np.asarray(tokens, dtype=np.int64))
    return {"prompts": len(chosen), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}


def _encoder(model: Any, tokenizer: Any, task: str, eval_data: Path | None, eval_tokens: int, dest: Path) -> dict[str, Any]:
    import torch

    from edgekit.bench.fidelity import ENCODER_MAX_TOKENS, _label_ids, encoder_texts
    from edgekit.runtime import pool

    texts, label_names = encoder_texts(eval_data, eval_tokens, task)
    ids_all, masks, lens, outs = [], [], [], []
    with progress.stage("source outputs", total=len(texts)) as st:
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=ENCODER_MAX_TOKENS, return_tensors="np")
            ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            outs.append(out.logits[0].float().numpy() if task == "text-classification"
                        else pool(out.last_hidden_state.float().numpy(), mask)[0])
            ids_all += ids[0].tolist()
            masks += mask[0].tolist()
            lens.append(ids.shape[1])
            st.advance()
    labels = None
    if task == "text-classification" and label_names:
        # The loaded model's config: transformers leaves default LABEL_i names out of config.json.
        labels = _label_ids(label_names, dict(model.config.id2label)).tolist()
    np.save(dest / "encoder_outputs.npy", np.stack(outs))
    np.save(dest / "ids.npy", np.asarray(ids_all, dtype=np.int64))
    np.save(dest / "mask.npy", np.asarray(masks, dtype=np.int64))
    return {"task": task, "lens": lens, "labels": labels}

"""Source integrity: is the source what it claims to be, before anything is exported from it?

Fidelity is measured relative to the source, so a source whose tokenizer is broken passes every gate while the
model speaks nonsense. This stage checks the source on absolute terms:

- tokenizer equivalence (GGUF sources): the converted tokenizer has the GGUF's tokens, ids and special tokens,
  and tokenizes probe strings exactly as the reference implementation of llama.cpp's algorithm (reference.py);
- sanity (every source): decode(encode(text)) == text on the probes, UTF-8 bytes per token on the eval text
  within a plausible band, and (language models) the source's own bits per byte on the eval text below the
  byte entropy of that same text — a model that cannot beat a byte-frequency table fitted on the very text it
  is scored on knows nothing about it, whatever the vocabulary size;
- optionally, when llama-cpp-python is importable, llama.cpp's next-token distribution on the same GGUF.

Bits per byte, not PPL, is what is judged: PPL per token depends on the tokenization being judged (a
near-character tokenizer lowers the bar a per-token PPL has to clear), bits per byte does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import SourceCheckFailed, UnsupportedError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from edgekit.source import SourceModel
    from edgekit.source.gguf_vocab import GGUFVocab

log = logging.getLogger(__name__)

PROBES: tuple[str, ...] = (
    "The capital of France is",
    "Hello world",
    " leading space",
    "trailing space ",
    "  two  spaces  inside",
    "Numbers: 3.14159, 2024, 1,000,000 and 42%.",
    "Punctuation!? (yes) - \"quoted\" 'single' [x] {y} a/b; c: d...",
    "don't, I'll, we've, they're, she's",
    "naïve café, Straße, Ελληνικά, русский, 日本語, 中文, العربية",
    "emoji 🙂🚀 and symbols ✓ € ≥ ∑",
    "def f(x):\n    return x * 2  # double it\n",
    "tabs\tand\nnew lines\n\nend",
    "user@example.com https://example.org/a?b=c&d=1",
)
BYTES_PER_TOKEN = (
    2.0,
    16.0,
)  # trained subword vocabularies on prose sit at ~3-6; near-byte pieces fall below 2
LLAMA_CPP_TOP1_MIN, LLAMA_CPP_KLD_MAX = 0.80, 0.20
OVERRIDE_FLAG = "--allow-implausible-source"


@dataclass
class Check:
    name: str
    passed: bool
    value: float | int | str | None
    limit: str
    detail: str = ""

    def describe(self) -> str:
        return f"source check '{self.name}' failed: {self.value} (expected {self.limit}){'; ' + self.detail if self.detail else ''}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gguf_origin(folder: Path) -> Path | None:
    """The GGUF file a converted folder came from (edgekit-source.json), if it still exists."""
    marker = folder / "edgekit-source.json"
    if not marker.is_file():
        return None
    origin = json.loads(marker.read_text()).get("converted_from")
    return Path(origin) if origin and Path(origin).is_file() else None


def tokenizer_record(folder: Path) -> dict[str, Any] | None:
    """sha256 of tokenizer.json and how it was built: what the manifest records and `edgekit run` must use."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    marker = folder / "edgekit-source.json"
    meta = json.loads(marker.read_text()) if marker.is_file() else {}
    origin = meta.get("converted_from")
    how = (
        f"{meta.get('tokenizer', 'unknown')} from {Path(origin).name}"
        if origin
        else "shipped with the source folder"
    )
    return {"file": "tokenizer.json", "sha256": sha256_file(path), "built_by": how}


# ---------------------------------------------------------------- tokenizer equivalence (GGUF)


def tokenizer_equivalence(
    gguf: Path, tokenizer_json: Path, probes: tuple[str, ...] | list[str] = PROBES
) -> list[Check]:
    """The shipped tokenizer against the GGUF vocabulary: tokens/ids, special tokens, probe tokenization."""
    from tokenizers import Tokenizer

    from edgekit.source.gguf_vocab import read_gguf_vocab

    vocab = read_gguf_vocab(gguf)
    tok = Tokenizer.from_file(str(tokenizer_json))
    have = tok.get_vocab(with_added_tokens=True)
    wrong = [i for i, t in vocab.ids.items() if have.get(i) != t]
    extra = len(set(have) - set(vocab.ids))
    checks = [
        Check(
            "tokenizer.vocab",
            not wrong and not extra,
            len(wrong) + extra,
            "0 tokens differing",
            f"of {len(vocab.tokens)}; first: {wrong[0]!r}" if wrong else "",
        )
    ]
    bad_specials = [
        f"{k}={vocab.tokens[i]!r}"
        for k, i in vocab.special_ids.items()
        if have.get(vocab.tokens[i]) != i or (vocab.token_types[i] == 3 and tok.id_to_token(i) is None)
    ]
    bos = vocab.special_ids.get("bos")
    with_specials = tok.encode("a", add_special_tokens=True).ids
    if bos is not None and (with_specials[:1] == [bos]) != vocab.add_bos:
        bad_specials.append(f"add_bos_token={vocab.add_bos}")
    checks.append(
        Check(
            "tokenizer.special_tokens",
            not bad_specials,
            len(bad_specials),
            "0 differing",
            ", ".join(bad_specials),
        )
    )
    checks.append(_probe_check(vocab, tok, probes))
    return checks


def _probe_check(vocab: GGUFVocab, tok: Tokenizer, probes: tuple[str, ...] | list[str]) -> Check:
    """The converted tokenizer against llama.cpp's algorithm (edgekit.source.reference) on probe texts."""
    from edgekit.source.reference import ReferenceTokenizer

    try:
        ref = ReferenceTokenizer(vocab)
    except UnsupportedError as exc:
        return Check("tokenizer.probes", False, "no reference", "a reference tokenization", exc.message)
    same, first = 0, ""
    for text in probes:
        want, got = ref.encode(text), tok.encode(text, add_special_tokens=False).ids
        same += want == got
        if want != got and not first:
            first = f"{text[:40]!r}: reference {want[:8]} vs converted {got[:8]}"
    return Check(
        "tokenizer.probes",
        same == len(probes),
        f"{same}/{len(probes)} identical",
        f"{len(probes)}/{len(probes)} identical to llama.cpp's algorithm",
        first,
    )


# ---------------------------------------------------------------- sanity (every source)


def round_trip(tokenizer: PreTrainedTokenizerBase, probes: tuple[str, ...] | list[str] = PROBES, *, loose: bool = False) -> Check:
    """decode(encode(p)) == p on every probe; `loose` ignores case and whitespace (uncased WordPiece)."""

    def norm(text: str) -> str:
        return "".join(text.lower().split()) if loose else text

    bad = [
        p
        for p in probes
        if norm(tokenizer.decode(tokenizer.encode(p, add_special_tokens=False), skip_special_tokens=True))
        != norm(p)
    ]
    return Check(
        "round_trip",
        not bad,
        f"{len(probes) - len(bad)}/{len(probes)}",
        "decode(encode(text)) == text on every probe" + (" (case and spaces ignored)" if loose else ""),
        f"first failing: {bad[0][:40]!r}" if bad else "",
    )


def eval_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> tuple[list[int], int, int]:
    """Token ids of the eval text (lines joined by blank lines, as bench does), with the characters and bytes."""
    ids: list[int] = []
    chars = nbytes = 0
    for line in texts:
        piece = ("\n\n" if ids else "") + line
        ids += tokenizer.encode(piece, add_special_tokens=False)
        chars, nbytes = chars + len(piece), nbytes + len(piece.encode("utf-8"))
        if len(ids) >= max_tokens:
            break
    return ids, chars, nbytes


def byte_entropy(data: bytes) -> float:
    """Bits per byte of a byte-frequency (order-0) model fitted on `data` itself."""
    counts, n = Counter(data), len(data)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def bits_per_byte(model: Module, tokenizer: PreTrainedTokenizerBase, ids: list[int], window: int) -> tuple[float, float, int]:
    """(PPL, bits per byte, tokens scored) of the model on `ids` in independent windows."""
    import torch

    nll, scored, nbytes = 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                continue
            logits = model(torch.tensor([chunk])).logits[0, :-1].float()
            target = torch.tensor(chunk[1:])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            scored += len(chunk) - 1
            nbytes += len(tokenizer.decode(chunk[1:]).encode("utf-8"))
    return math.exp(nll / scored), nll / math.log(2) / max(nbytes, 1), scored


def sanity(source: SourceModel, texts: list[str], *, eval_tokens: int = 512) -> tuple[list[Check], dict[str, Any]]:
    """Round trip, bytes per token and (language models) bits per byte vs the text's byte entropy."""
    try:
        tokenizer = source.load_tokenizer()
    except (OSError, ValueError) as exc:
        raise SourceCheckFailed(f"{source.path}: cannot load the source's tokenizer ({exc})") from exc
    generative = source.task == "text-generation"
    checks = [round_trip(tokenizer, loose=not generative)]
    if not generative:  # an encoder's vocabulary may lack emoji or scripts ([UNK]): recorded, not judged
        checks[0].passed, checks[0].limit = True, checks[0].limit + ", recorded only for encoders"
    ids, chars, nbytes = eval_ids(tokenizer, texts, eval_tokens)
    if not ids:
        raise SourceCheckFailed("the eval text tokenized to nothing; give --eval-data with real text")
    # Characters and bytes of the text that was tokenized, so the ratio is exact even past eval_tokens.
    bpt = nbytes / len(ids)
    figures: dict[str, Any] = {
        "eval_tokens": len(ids),
        "chars_per_token": round(chars / len(ids), 3),
        "bytes_per_token": round(bpt, 3),
    }
    low, high = BYTES_PER_TOKEN
    checks.append(
        Check(
            "bytes_per_token",
            low <= bpt <= high,
            round(bpt, 3),
            f"{low:g}..{high:g} on the eval text",
            f"{figures['chars_per_token']} characters per token",
        )
    )
    if generative and source.format == "hf":
        config = source.config
        window = min(256, int(config.get("max_position_embeddings") or config.get("n_positions") or 256))
        model = source.load_model()
        ppl, bpb, scored = bits_per_byte(model, tokenizer, ids, window)
        baseline = byte_entropy(tokenizer.decode(ids).encode("utf-8"))
        figures.update(
            {
                "ppl": round(ppl, 3),
                "bits_per_byte": round(bpb, 4),
                "byte_entropy_baseline": round(baseline, 4),
                "ppl_tokens": scored,
            }
        )
        checks.append(
            Check(
                "bits_per_byte",
                bpb < baseline,
                round(bpb, 4),
                f"< {baseline:.4g}, the eval text's own byte entropy",
                f"PPL {ppl:.4g} on {scored} tokens",
            )
        )
    return checks, figures


def check_source(
    source: SourceModel,
    *,
    eval_data: Path | None = None,
    allow_implausible: bool = False,
    eval_tokens: int = 512,
    llama_cpp: bool = True,
) -> dict[str, Any]:
    """Run every check that applies to `source`; raise SourceCheckFailed on the first failure unless allowed.

    Returns the record for report.json `source.sanity` (figures, every check, and whether the override was used).
    """
    from edgekit.data import load_texts

    checks: list[Check] = []
    gguf = gguf_origin(source.path) if source.format == "hf" else None
    if gguf is not None and (source.path / "tokenizer.json").is_file():
        checks += tokenizer_equivalence(gguf, source.path / "tokenizer.json")
        _stop_at_failure(checks, allow_implausible)  # a wrong tokenizer makes every later figure meaningless
    sane, figures = sanity(source, load_texts(eval_data), eval_tokens=eval_tokens)
    checks += sane
    _stop_at_failure(checks, allow_implausible)
    if gguf is not None and llama_cpp and source.task == "text-generation":
        from edgekit.source.llama_cpp_check import cross_check

        cross = cross_check(gguf, source, load_texts(eval_data))
        if cross is not None:
            checks += cross
            _stop_at_failure(checks, allow_implausible)
    failed = [c.name for c in checks if not c.passed]
    for c in checks:
        if not c.passed:
            log.warning("%s (allowed by %s)", c.describe(), OVERRIDE_FLAG)
    return {
        "passed": not failed,
        "failed": failed,
        "override": OVERRIDE_FLAG if allow_implausible else None,
        "figures": figures,
        "checks": [asdict(c) for c in checks],
        "tokenizer": tokenizer_record(source.path),
    }


def _stop_at_failure(checks: list[Check], allowed: bool) -> None:
    failed = next((c for c in checks if not c.passed), None)
    if failed is not None and not allowed:
        raise SourceCheckFailed(
            failed.describe(), hint=f"nothing was built; {OVERRIDE_FLAG} to accept it anyway"
        )

"""The tokenizer fields of a GGUF file, read once into one typed record (gguf-py's reader, no model load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError

# llama.cpp's token types (gguf-py's TokenType): only these change how a token is matched or decoded.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    """`tokenizer.ggml.*`: the vocabulary llama.cpp tokenizes with, and the reference for any conversion."""

    model: str  # "llama" (SentencePiece-style, scores + byte fallback) | "gpt2" (byte-level BPE with merges)
    pre: str  # pre-tokenizer name for "gpt2" vocabularies ("default", "smollm", "llama-bpe", ...)
    tokens: list[str] = field(repr=False)
    scores: list[float] = field(repr=False)
    token_types: list[int] = field(repr=False)
    merges: list[str] = field(repr=False)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = field(default=None, repr=False)

    @property
    def ids(self) -> dict[str, int]:
        # The first id wins on a duplicate token text, as llama.cpp's token_to_id map does.
        out: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            out.setdefault(tok, i)
        return out

    def of_type(self, *types: int) -> list[int]:
        return [i for i, t in enumerate(self.token_types) if t in types]


def _value(reader: Any, key: str, default: Any = None) -> Any:
    fld = reader.fields.get(key)
    if fld is None:
        return default
    return fld.contents()


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """Read the tokenizer of a GGUF file; a GGUF without one is an InputError (edgekit needs the vocabulary)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises bare ValueError/struct errors on bad files
        raise InputError(f"{path}: corrupt or truncated GGUF file ({exc})") from exc
    tokens = _value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise InputError(f"{path}: the GGUF file has no tokenizer (tokenizer.ggml.tokens); edgekit needs one")
    model = str(_value(reader, "tokenizer.ggml.model", "llama"))
    n = len(tokens)
    specials = {}
    for name, key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("pad", "padding_token_id"),
    ):
        value = _value(reader, f"tokenizer.ggml.{key}")
        if value is not None and 0 <= int(value) < n:
            specials[name] = int(value)
    return GGUFVocab(
        model=model,
        pre=str(_value(reader, "tokenizer.ggml.pre", "default")),
        tokens=[str(t) for t in tokens],
        scores=[float(s) for s in _value(reader, "tokenizer.ggml.scores", None) or [0.0] * n],
        token_types=[int(t) for t in _value(reader, "tokenizer.ggml.token_type", None) or [NORMAL] * n],
        merges=[str(m) for m in _value(reader, "tokenizer.ggml.merges", None) or []],
        special_ids=specials,
        # llama.cpp's defaults when a key is absent: SPM vocabularies add BOS and a space prefix, BPE ones do not.
        add_bos=bool(_value(reader, "tokenizer.ggml.add_bos_token", model == "llama")),
        add_eos=bool(_value(reader, "tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(_value(reader, "tokenizer.ggml.add_space_prefix", model == "llama")),
        chat_template=_value(reader, "tokenizer.chat_template"),
    )

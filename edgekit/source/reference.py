"""A small, independent re-implementation of llama.cpp's two common tokenizers, as the reference for GGUF sources.

It shares no code with the `tokenizers`-based builder (gguf_tokenizer.py): the builder is checked against this,
and this is checked against llama.cpp's algorithms as written in `src/llama-vocab.cpp`:

- SPM ("llama" vocab, `llm_tokenizer_spm`): escape spaces as "▁" (with a leading one when add_space_prefix),
  split into UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is a token with the
  highest score (ties: leftmost), then map each symbol to its id, or to its bytes as `<0xXX>` tokens.
- BPE ("gpt2" vocab, `llm_tokenizer_bpe`): split with the pre-tokenizer's regexes in turn (the text between
  matches stays a piece), map each piece's bytes to GPT-2's printable byte alphabet, repeatedly merge the
  adjacent pair with the lowest merge rank (ties: leftmost), then map each symbol to its id.

As with llama.cpp's `parse_special=false`, control tokens in the text are not parsed, but user-defined tokens are
cut out first, longest first (`tokenizer_st_partition`); an SPM text fragment after such a token gets its own
space prefix.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from functools import lru_cache

from edgekit.errors import UnsupportedError
from edgekit.source.gguf_vocab import USER_DEFINED, GGUFVocab

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre → the regexes llama.cpp applies in turn (llama-vocab.cpp, llm_tokenizer_bpe's constructor).
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (GPT2_PATTERN,),
    "gpt-2": (GPT2_PATTERN,),
    "gpt2": (GPT2_PATTERN,),
    "smollm": (r"\p{N}", GPT2_PATTERN),
    "starcoder": (r"\p{N}", GPT2_PATTERN),
    "refact": (r"\p{N}", GPT2_PATTERN),
    "llama-bpe": (LLAMA3_PATTERN,),
    "llama3": (LLAMA3_PATTERN,),
}
# Pre-tokenizers whose vocabularies llama.cpp tokenizes with `ignore_merges`: a piece that is a token is kept whole.
IGNORE_MERGES = frozenset({"llama-bpe", "llama3"})


def pre_tokenizer_regexes(pre: str) -> tuple[str, ...]:
    try:
        return PRE_TOKENIZER_REGEXES[pre]
    except KeyError:
        raise UnsupportedError(
            f"GGUF pre-tokenizer '{pre}' is not supported yet (supported: {', '.join(sorted(PRE_TOKENIZER_REGEXES))})"
        ) from None


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (printable Latin-1 map to themselves, the rest to U+0100+)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def split_keep_gaps(pieces: list[str], pattern: str) -> list[str]:
    """Split every piece at the regex's matches; matches and the text between them all become pieces."""
    import regex

    compiled = regex.compile(pattern)
    out: list[str] = []
    for piece in pieces:
        start = 0
        for m in compiled.finditer(piece):
            if m.start() > start:
                out.append(piece[start : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            start = m.end()
        if start < len(piece):
            out.append(piece[start:])
    return out


class ReferenceTokenizer:
    """encode(text) → ids, the way llama.cpp tokenizes with this vocabulary (without BOS/EOS)."""

    def __init__(self, vocab: GGUFVocab) -> None:
        self.vocab = vocab
        self.ids = vocab.ids
        self._encode: Callable[[str], list[int]]
        if vocab.model == "llama":
            self._encode = self._spm
        elif vocab.model == "gpt2":
            self.regexes = pre_tokenizer_regexes(vocab.pre)
            self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(vocab.merges)}
            self.ignore_merges = vocab.pre in IGNORE_MERGES
            self._encode = self._bpe
        else:
            raise UnsupportedError(
                f"GGUF tokenizer model '{vocab.model}' is not supported (supported: llama, gpt2)"
            )

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._partition(text):
            out += [piece] if isinstance(piece, int) else self._encode(piece)
        return out

    def _partition(self, text: str) -> list[str | int]:
        fragments: list[str | int] = [text] if text else []
        for tid in sorted(self.vocab.of_type(USER_DEFINED), key=lambda i: -len(self.vocab.tokens[i])):
            token = self.vocab.tokens[tid]
            split: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or token not in frag:
                    split.append(frag)
                    continue
                for i, part in enumerate(frag.split(token)):
                    split += ([tid] if i else []) + ([part] if part else [])
            fragments = split
        return fragments

    # ------------------------------------------------------------ SPM

    def _spm(self, text: str) -> list[int]:
        if self.vocab.add_space_prefix:
            text = " " + text
        symbols = list(text.replace(" ", "▁"))
        # Doubly linked symbols; a merged-away symbol becomes "" and queued bigrams that touch it are stale.
        nxt = [*range(1, len(symbols)), -1]
        prv = [-1, *range(len(symbols) - 1)]
        agenda: list[tuple[float, int, int, str]] = []

        def push(left: int) -> None:
            right = nxt[left]
            if left < 0 or right < 0:
                return
            joined = symbols[left] + symbols[right]
            tid = self.ids.get(joined)
            if tid is not None:
                heapq.heappush(agenda, (-self.vocab.scores[tid], left, right, joined))

        for i in range(len(symbols) - 1):
            push(i)
        while agenda:
            _, left, right, joined = heapq.heappop(agenda)
            if nxt[left] != right or symbols[left] + symbols[right] != joined:
                continue
            symbols[left], symbols[right] = joined, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left])
            push(left)
        out: list[int] = []
        for sym in symbols:
            if sym:
                out += self._spm_symbol(sym)
        return out

    def _spm_symbol(self, sym: str) -> list[int]:
        tid = self.ids.get(sym)
        if tid is not None:
            return [tid]
        out = []
        for b in sym.encode("utf-8"):
            byte_id = self.ids.get(f"<0x{b:02X}>")
            out.append(byte_id if byte_id is not None else self.vocab.special_ids.get("unk", 0))
        return out

    # ------------------------------------------------------------ BPE

    def _bpe(self, text: str) -> list[int]:
        pieces = [text]
        for pattern in self.regexes:
            pieces = split_keep_gaps(pieces, pattern)
        table = byte_alphabet()
        out: list[int] = []
        for piece in pieces:
            word = "".join(table[b] for b in piece.encode("utf-8"))
            if self.ignore_merges and word in self.ids:
                out.append(self.ids[word])
                continue
            for sym in self._bpe_merge(list(word)):
                tid = self.ids.get(sym)
                if tid is not None:
                    out.append(tid)
                else:  # llama.cpp falls back to the symbol's single characters
                    out += [self.ids[c] for c in sym if c in self.ids]
        return out

    def _bpe_merge(self, symbols: list[str]) -> list[str]:
        while len(symbols) > 1:
            best: tuple[int, int] | None = None
            for i in range(len(symbols) - 1):
                rank = self.ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

"""GGUF tokenizers: the reference algorithms on hand-checked cases, and the builder against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.source.gguf_tokenizer import build_tokenizer
from edgekit.source.gguf_vocab import GGUFVocab, read_gguf_vocab
from edgekit.source.integrity import PROBES, tokenizer_equivalence
from edgekit.source.reference import ReferenceTokenizer
from tests.source.gguf_fixtures import bpe_vocab, spm_vocab, write_gguf


def _spm(tokens: dict[str, float], *, prefix: bool = True) -> GGUFVocab:
    names = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *tokens]
    scores = [0.0] * 259 + list(tokens.values())
    return GGUFVocab(
        "llama",
        "default",
        names,
        scores,
        [2, 3, 3] + [6] * 256 + [1] * len(tokens),
        [],
        {"unk": 0, "bos": 1, "eos": 2},
        add_bos=True,
        add_space_prefix=prefix,
    )


def test_reference_spm_merges_by_score_and_falls_back_to_bytes() -> None:
    # "▁ab" splits as ▁|ab or ▁a|b: llama.cpp merges the highest-scoring bigram first.
    vocab = _spm({"▁": -1, "a": -2, "b": -3, "ab": -4, "▁a": -5})
    ref = ReferenceTokenizer(vocab)
    ids = vocab.ids
    assert ref.encode("ab") == [ids["▁"], ids["ab"]]
    flipped = _spm({"▁": -1, "a": -2, "b": -3, "ab": -6, "▁a": -5})
    assert ReferenceTokenizer(flipped).encode("ab") == [ids["▁a"], ids["b"]]
    assert ref.encode("a") == [ids["▁a"]]
    assert ref.encode("é") == [ids["▁"], ids["<0xC3>"], ids["<0xA9>"]]  # not in the vocabulary: UTF-8 bytes
    for v in (vocab, flipped):  # the tokenizers-built one agrees on the same hand-checked cases
        for text in ("ab", "a", "é", "ab ab"):
            assert build_tokenizer(v).encode(text, add_special_tokens=False).ids == ReferenceTokenizer(
                v
            ).encode(text)
    assert ReferenceTokenizer(_spm({"▁": -1, "a": -2}, prefix=False)).encode("a a") == [
        ids["a"],
        ids["▁"],
        ids["a"],
    ]


def test_reference_bpe_applies_pre_tokenizer_then_merge_ranks() -> None:
    from edgekit.source.reference import byte_alphabet

    space = byte_alphabet()[ord(" ")]  # "Ġ"
    tokens = [*byte_alphabet().values(), "12", f"{space}a", "aa", f"{space}aa"]
    merges = ["a a", f"{space} a", f"{space}a a", "1 2"]
    vocab = GGUFVocab("gpt2", "smollm", tokens, [0.0] * len(tokens), [1] * len(tokens), merges)
    ids = vocab.ids
    # a+a (rank 0) goes before Ġ+a (rank 1); "Ġ aa" is no merge, so Ġaa is never reached (Ġ+a first would reach it).
    assert ReferenceTokenizer(vocab).encode(" aa") == [ids[space], ids["aa"]]
    assert ReferenceTokenizer(vocab).encode("12") == [ids["1"], ids["2"]]  # smollm isolates every digit
    default = GGUFVocab("gpt2", "default", tokens, [0.0] * len(tokens), [1] * len(tokens), merges)
    assert ReferenceTokenizer(default).encode("12") == [ids["12"]]


@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_fixture_tokenizers_match_the_reference(kind: str, tmp_path: Path) -> None:
    from edgekit.data import eval_texts

    vocab = spm_vocab() if kind == "spm" else bpe_vocab()
    path = write_gguf(tmp_path / f"{kind}.gguf", vocab, weights=False)
    gguf_vocab = read_gguf_vocab(path)
    assert gguf_vocab.tokens == vocab["tokens"] and gguf_vocab.model == vocab["model"]
    ref, built = ReferenceTokenizer(gguf_vocab), build_tokenizer(gguf_vocab)
    text = "\n\n".join(eval_texts()[:10])
    for probe in (*PROBES, text):
        assert built.encode(probe, add_special_tokens=False).ids == ref.encode(probe), probe[:40]
        assert built.decode(ref.encode(probe)) == probe
    assert (built.encode("x").ids[0] == gguf_vocab.special_ids["bos"]) is gguf_vocab.add_bos
    # A real vocabulary, not characters: the pieces are words and word parts.
    assert len(text) / len(ref.encode(text)) > 2.0


def _fixture_json(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    vocab = spm_vocab() if kind == "spm" else bpe_vocab()
    gguf = write_gguf(tmp_path / f"{kind}.gguf", vocab, weights=False)
    out = tmp_path / "tok.json"
    build_tokenizer(read_gguf_vocab(gguf)).save(str(out))
    return gguf, out


@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_equivalence_passes_for_the_built_tokenizer_and_fails_without_merges(
    kind: str, tmp_path: Path
) -> None:
    gguf, tok_json = _fixture_json(tmp_path, kind)
    assert all(c.passed for c in tokenizer_equivalence(gguf, tok_json))
    data = json.loads(tok_json.read_text())
    data["model"]["merges"] = []
    tok_json.write_text(json.dumps(data))
    checks = {c.name: c for c in tokenizer_equivalence(gguf, tok_json)}
    assert checks["tokenizer.vocab"].passed  # the same tokens: only the tokenization is wrong
    assert not checks["tokenizer.probes"].passed and "reference" in checks["tokenizer.probes"].detail


def test_transformers_gemma_converter_fails_the_check(tmp_path: Path) -> None:
    """The bug behind this check: transformers 4.57 turns an SPM vocabulary of a gemma GGUF into a Unigram model
    over the scores (negative merge ranks), which prefers many short pieces."""
    from transformers import AutoTokenizer

    gguf = write_gguf(tmp_path / "gemma.gguf", spm_vocab(), arch="gemma3", weights=False)
    AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name).save_pretrained(tmp_path / "hf")
    checks = {c.name: c for c in tokenizer_equivalence(gguf, tmp_path / "hf" / "tokenizer.json")}
    assert not checks["tokenizer.probes"].passed
    assert checks["tokenizer.probes"].value.startswith("0/")  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_user_defined_tokens_are_cut_out_first(kind: str) -> None:
    vocab = spm_vocab() if kind == "spm" else bpe_vocab()
    vocab["tokens"] += ["<|user|>", "\n\n"]
    vocab["types"] += [
        4,
        4,
    ]  # USER_DEFINED: matched whole in raw text, as llama.cpp does even without parse_special
    if vocab["scores"] is not None:
        vocab["scores"] += [0.0, 0.0]
    gguf_vocab = GGUFVocab(
        vocab["model"],
        vocab["pre"],
        vocab["tokens"],
        vocab["scores"] or [0.0] * len(vocab["tokens"]),
        vocab["types"],
        vocab["merges"] or [],
        {"bos": vocab["bos"]},
        add_space_prefix=vocab["add_space_prefix"],
    )
    ref, built = ReferenceTokenizer(gguf_vocab), build_tokenizer(gguf_vocab)
    text = "hello<|user|>the world\n\nand more<|user|>"
    want = ref.encode(text)
    assert want.count(gguf_vocab.ids["<|user|>"]) == 2 and gguf_vocab.ids["\n\n"] in want
    assert built.encode(text, add_special_tokens=False).ids == want


def test_special_tokens_and_bos_are_checked(tmp_path: Path) -> None:
    gguf, tok_json = _fixture_json(tmp_path, "spm")
    data = json.loads(tok_json.read_text())
    data["post_processor"] = None  # the GGUF says add_bos_token = true
    tok_json.write_text(json.dumps(data))
    checks = {c.name: c for c in tokenizer_equivalence(gguf, tok_json)}
    assert (
        not checks["tokenizer.special_tokens"].passed
        and "add_bos_token" in checks["tokenizer.special_tokens"].detail
    )

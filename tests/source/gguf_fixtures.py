"""Small real GGUF files written with gguf-py's GGUFWriter: an SPM ("llama") and a BPE ("gpt2") vocabulary,
each trained with `tokenizers` on local text, optionally with tiny random llama weights so transformers loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPM_SIZE, BPE_SIZE = 1000, 1000
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def _corpus() -> list[str]:
    from edgekit.data import calibration_texts

    return calibration_texts(300)


def spm_vocab() -> dict[str, Any]:
    """A SentencePiece-BPE-style vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces scored by -rank.

    That is how SentencePiece BPE models (Llama 2, Gemma) store scores: higher score = merged earlier.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=SPM_SIZE, show_progress=False))
    pieces = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(pieces)
    return {
        "model": "llama",
        "pre": "default",
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "merges": None,
        "bos": 1,
        "eos": 2,
        "unk": 0,
        "add_bos": True,
        "add_space_prefix": True,
    }


def bpe_vocab(pre: str = "smollm") -> dict[str, Any]:
    """A byte-level BPE vocabulary with its merges, trained with the pre-tokenizer llama.cpp applies for `pre`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from edgekit.source.reference import PRE_TOKENIZER_REGEXES

    tok = Tokenizer(models.BPE())
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_SIZE,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [CONTROL] + [NORMAL] * (len(tokens) - 1)
    return {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "scores": None,
        "types": types,
        "merges": merges,
        "bos": 0,
        "eos": 0,
        "unk": None,
        "add_bos": False,
        "add_space_prefix": False,
    }


def write_gguf(path: Path, vocab: dict[str, Any], *, arch: str = "llama", weights: bool = True) -> Path:
    """A GGUF file with this vocabulary, and (weights=True) a tiny random llama transformers can load."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    hidden, layers, heads, kv_heads, ffn = 64, 2, 4, 2, 128
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if vocab["scores"] is not None:
        writer.add_token_scores(vocab["scores"])
    if vocab["merges"] is not None:
        writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(vocab["bos"])
    writer.add_eos_token_id(vocab["eos"])
    if vocab["unk"] is not None:
        writer.add_unk_token_id(vocab["unk"])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_space_prefix(vocab["add_space_prefix"])
    if weights:
        rng = np.random.default_rng(0)
        for name, shape in _llama_tensors(len(vocab["tokens"]), hidden, layers, heads, kv_heads, ffn):
            data = np.ones(shape, np.float32) if name.endswith("norm.weight") else rng.normal(0, 0.2, shape)
            writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama_tensors(
    vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int
) -> list[tuple[str, tuple[int, ...]]]:
    head_dim = hidden // heads
    out: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (vocab, hidden)),
        ("output_norm.weight", (hidden,)),
        ("output.weight", (vocab, hidden)),
    ]
    for i in range(layers):
        out += [
            (f"blk.{i}.attn_norm.weight", (hidden,)),
            (f"blk.{i}.ffn_norm.weight", (hidden,)),
            (f"blk.{i}.attn_q.weight", (hidden, hidden)),
            (f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden)),
            (f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden)),
            (f"blk.{i}.attn_output.weight", (hidden, hidden)),
            (f"blk.{i}.ffn_gate.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_up.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_down.weight", (hidden, ffn)),
        ]
    return out

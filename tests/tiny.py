"""Tiny random models built from configs, with a tokenizer trained locally on the Lee corpus.

Weights are drawn with a large init range so logits are peaked: top-1 comparisons between runtimes are
then meaningful instead of coin flips between near-equal logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAUSAL = ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma3")
ENCODERS = ("bert-cls", "bert-emb")
VOCAB = 512


def train_tokenizer(kind: str) -> Any:
    """A byte-level BPE (decoders) or WordPiece (BERT) tokenizer trained on local text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from edgekit.data import lee_background

    corpus = lee_background(300)
    if kind == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=256,
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
        model_max_length=256,
    )


def _config(name: str) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(vocab_size=VOCAB, initializer_range=0.2, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    llama_like: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, **common,
    )
    if name == "llama":
        return tf.LlamaConfig(**llama_like), tf.LlamaForCausalLM
    if name == "llama-tied":  # one embedding for input and output, as SmolLM2 (not in CAUSAL: one test module)
        return tf.LlamaConfig(**{**llama_like, "tie_word_embeddings": True}), tf.LlamaForCausalLM
    if name == "mistral":
        return tf.MistralConfig(sliding_window=None, **llama_like), tf.MistralForCausalLM
    if name == "qwen2":
        return tf.Qwen2Config(**llama_like), tf.Qwen2ForCausalLM
    if name == "phi3":
        return tf.Phi3Config(**llama_like), tf.Phi3ForCausalLM
    # Sliding windows far shorter than the parity prompt (~50 tokens), so a window ignored or off by one shows
    # (not in CAUSAL: tests/export/test_fused.py). phi3-swa also rotates half of each 32-wide head, as Phi-4-mini.
    if name == "mistral-swa":
        return tf.MistralConfig(**{**llama_like, "sliding_window": 5}), tf.MistralForCausalLM
    if name == "qwen2-swa":  # layers 2 and 3 slide, 0 and 1 attend to everything
        cfg = tf.Qwen2Config(**llama_like, use_sliding_window=True, sliding_window=5, max_window_layers=2)
        return cfg, tf.Qwen2ForCausalLM
    if name == "phi3-swa":
        cfg = tf.Phi3Config(**{**llama_like, "num_attention_heads": 2, "num_key_value_heads": 1},
                            sliding_window=5, partial_rotary_factor=0.5)
        return cfg, tf.Phi3ForCausalLM
    if name == "gemma3":
        cfg = tf.Gemma3TextConfig(head_dim=16, sliding_window=64, **llama_like)
        return cfg, tf.Gemma3ForCausalLM
    if name == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=256, **common), tf.GPT2LMHeadModel
    bert = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                max_position_embeddings=256, vocab_size=VOCAB, initializer_range=0.2, pad_token_id=0)
    if name == "bert-cls":
        return tf.BertConfig(num_labels=2, **bert), tf.BertForSequenceClassification
    if name == "bert-emb":
        return tf.BertConfig(**bert), tf.BertModel
    raise ValueError(name)


def build_tiny(name: str, out: Path, tokenizers: dict[str, Any] | None = None) -> Path:
    """Write a tiny random HF model folder (config, safetensors, tokenizer, generation config) to `out`."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(0)
    config, cls = _config(name)
    model = cls(config).eval()
    kind = "bert" if name.startswith("bert") else "bpe"
    cache = tokenizers if tokenizers is not None else {}
    if kind not in cache:
        cache[kind] = train_tokenizer(kind)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    cache[kind].save_pretrained(out)
    if name in CAUSAL or name in ("llama-tied", "mistral-swa", "qwen2-swa", "phi3-swa"):
        GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=1).save_pretrained(out)
    (out / "tiny.json").write_text(json.dumps({"name": name}))
    return out

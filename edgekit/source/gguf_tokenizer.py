"""Build a `tokenizers` tokenizer from a GGUF vocabulary that tokenizes as llama.cpp does on the same file.

Why not transformers' GGUF converter (4.57): for SentencePiece vocabularies of BPE-type models (gemma2/3) it
builds a Unigram model and runs Viterbi over `tokenizer.ggml.scores`; those scores are negative merge ranks, so
the best path is many short, early pieces: ordinary English comes out in near-character tokens. It also drops
the vocabulary's pre-tokenizer (`tokenizer.ggml.pre`) for byte-level BPE vocabularies (SmolLM2's "smollm" splits
digits one by one), and its Llama path takes the EOS token from the BOS id. Here both vocabulary kinds become the
`tokenizers` model that runs llama.cpp's algorithm:

- "llama" (SPM): BPE with byte fallback, whose merges are every split of a token into two tokens, ranked by the
  merged token's score — the same pair llama.cpp's bigram agenda merges first; spaces become "▁", with a leading
  one when `add_space_prefix`.
- "gpt2" (BPE): the file's own merges, the pre-tokenizer's regexes as Split steps, then byte-level mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.source.gguf_vocab import CONTROL, USER_DEFINED, GGUFVocab
from edgekit.source.reference import IGNORE_MERGES, pre_tokenizer_regexes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUILT_BY = "edgekit.source.gguf_tokenizer"
VERSION = 1  # bump when the tokenizer built from the same GGUF changes: cached conversions are rebuilt


def spm_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a token, best merged-token score first (ties: token id)."""
    ids = vocab.ids
    ranked: list[tuple[float, int, str, str]] = []
    for tid, tok in enumerate(vocab.tokens):
        if ids.get(tok) != tid:
            continue
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                ranked.append((-vocab.scores[tid], tid, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def build_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """A `tokenizers.Tokenizer` for this vocabulary (BOS/EOS added per add_bos_token/add_eos_token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    ids = vocab.ids
    unk = vocab.tokens[vocab.special_ids["unk"]] if "unk" in vocab.special_ids else None
    if vocab.model == "llama":
        tok = Tokenizer(BPE(ids, spm_merges(vocab), unk_token=unk, fuse_unk=True, byte_fallback=True))
        steps = ([normalizers.Prepend("▁")] if vocab.add_space_prefix else []) + [
            normalizers.Replace(" ", "▁")
        ]
        tok.normalizer = normalizers.Sequence(steps)
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if vocab.add_space_prefix else []))
    else:
        regexes = pre_tokenizer_regexes(vocab.pre)
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
        tok = Tokenizer(BPE(ids, merges, ignore_merges=vocab.pre in IGNORE_MERGES))
        from tokenizers import Regex

        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = decoders.ByteLevel()
    # Control and user-defined tokens are matched whole, never split by the model.
    tok.add_special_tokens(
        [AddedToken(vocab.tokens[i], special=True, normalized=False) for i in vocab.of_type(CONTROL)]
    )
    tok.add_tokens(
        [AddedToken(vocab.tokens[i], special=False, normalized=False) for i in vocab.of_type(USER_DEFINED)]
    )
    _post_processor(tok, vocab)
    return tok


def _post_processor(tok: Tokenizer, vocab: GGUFVocab) -> None:
    from tokenizers import processors

    specials = []
    single = "$A"
    if vocab.add_bos and "bos" in vocab.special_ids:
        bos = vocab.tokens[vocab.special_ids["bos"]]
        single, specials = f"{bos} {single}", [(bos, vocab.special_ids["bos"])]
    if vocab.add_eos and "eos" in vocab.special_ids:
        eos = vocab.tokens[vocab.special_ids["eos"]]
        single += f" {eos}"
        specials.append((eos, vocab.special_ids["eos"]))
    if specials:
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)


def save_tokenizer(vocab: GGUFVocab, folder: Path) -> Path:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json, loadable by AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    named = {f"{k}_token": vocab.tokens[i] for k, i in vocab.special_ids.items()}
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=build_tokenizer(vocab), clean_up_tokenization_spaces=False, **named
    )
    if vocab.chat_template:
        fast.chat_template = vocab.chat_template
    fast.save_pretrained(folder)
    # transformers would otherwise add its own BOS on top of the post-processor's.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"add_bos_token": False, "add_eos_token": False, "edgekit_built_by": f"{BUILT_BY}@{VERSION}"})
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return folder / "tokenizer.json"

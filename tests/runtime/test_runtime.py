"""The torch-free runtime: greedy generation with the KV cache equals PyTorch's, and it never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekit.runtime import Decoder, Model, make_session

PROMPTS = ([5, 17, 42, 99, 7, 3], [200, 11, 64])


@pytest.fixture
def exported(tiny_onnx):  # type: ignore[no-untyped-def]
    """exported("llama") → the folder of the session's tiny export (tests/conftest.py `tiny_onnx`)."""
    return lambda name: tiny_onnx(name).path


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_generation_equals_pytorch_generate(name: str, exported, tiny_model) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model(name)).eval()
    decoder = Decoder(make_session(exported(name) / "model.onnx"))
    for prompt in PROMPTS:
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                 pad_token_id=1, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        expected = ref[0, len(prompt):].tolist()
        got = decoder.generate(prompt, 24)
        assert len(expected) == 24 and got.tokens == expected
        assert got.ttft_s > 0 and len(got.step_s) == 23


def test_generation_stops_at_eos(exported) -> None:  # type: ignore[no-untyped-def]
    decoder = Decoder(make_session(exported("llama") / "model.onnx"))
    free = decoder.generate(list(PROMPTS[0]), 8).tokens
    stopped = decoder.generate(list(PROMPTS[0]), 8, eos={free[2]}).tokens
    assert stopped == free[: free.index(free[2]) + 1]


def test_model_streams_the_greedy_continuation(exported) -> None:  # type: ignore[no-untyped-def]
    folder = exported("llama")
    model = Model(folder)
    assert model.task == "text-generation"
    pieces = list(model.stream("hello world", max_new_tokens=6))
    # The pieces are the greedy continuation, decoded: the same tokens a bare Decoder picks, in order, no repeats.
    tokens = Decoder(make_session(folder / "model.onnx")).generate(model.encode("hello world"), 6, eos=model.eos_ids).tokens
    text = model.tokenizer.decode(tokens, skip_special_tokens=True)
    assert text and "".join(pieces) == text.rstrip("\ufffd")


def test_runtime_and_measurement_process_import_no_torch(exported) -> None:  # type: ignore[no-untyped-def]
    folder = exported("gpt2")
    code = (
        "import sys, json; from edgekit.runtime import Model; import edgekit.bench.measure; "
        f"m = Model({str(folder)!r}); text = ''.join(m.stream('hello', max_new_tokens=3)); "
        "print(json.dumps(sorted(k for k in ('torch', 'transformers', 'optimum') if k in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []

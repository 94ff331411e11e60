"""The torch-free runtime: greedy generation with the KV cache equals PyTorch's, and it never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.runtime import Decoder, Model, make_session

PROMPTS = ([5, 17, 42, 99, 7, 3], [200, 11, 64])


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from edgekit.catalog import load_target
    from edgekit.export import export
    from edgekit.source import load_source

    root = tmp_path_factory.mktemp("runtime-exports")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = export(load_source(str(tiny_model(name))), load_target("x86-avx2"), root / name).path
        return cache[name]

    return get


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


def test_model_streams_text(exported) -> None:  # type: ignore[no-untyped-def]
    model = Model(exported("llama"))
    assert model.task == "text-generation"
    assert isinstance("".join(model.stream("hello world", max_new_tokens=4)), str)


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

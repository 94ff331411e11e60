from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.artifact import OnnxArtifact


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """tiny_onnx("llama") → OnnxArtifact of the tiny model exported for x86-avx2 (once per session)."""
    from edgekit.catalog import load_target
    from edgekit.export import export
    from edgekit.source import load_source

    root = tmp_path_factory.mktemp("bench-exports")
    cache: dict[str, OnnxArtifact] = {}

    def get(name: str) -> OnnxArtifact:
        if name not in cache:
            cache[name] = export(load_source(str(tiny_model(name))), load_target("x86-avx2"), root / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def perturbed_llama(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A copy of tiny llama with noise on every weight: a 'source' the llama export is not faithful to."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_model("llama")
    out = tmp_path_factory.mktemp("perturbed") / "llama"
    shutil.copytree(src, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    return out

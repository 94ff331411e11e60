from __future__ import annotations

from pathlib import Path

import pytest


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

"""Rotation in the fused writer (edgekit.export.rotation): exact in float, recorded, refused where it cannot apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgekit.catalog import load_target
from edgekit.errors import UnsupportedError
from edgekit.export import export, rotation
from edgekit.source import load_source
from edgekit.specs import RotateSettings
from tests.conftest import run_cli
from tests.export.test_fused import _greedy_logits

AVX2 = load_target("x86-avx2")


def _graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(str(folder / "model.onnx")).graph


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in graph.initializer if i.name == name))


@pytest.mark.parametrize("n", [2, 4, 12, 64, 72, 576, 896])
def test_hadamard_matrices_are_hadamard(n: int) -> None:
    h = rotation.hadamard(n)
    assert h is not None and set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


def test_residual_rotation_falls_back_to_orthogonal() -> None:
    assert rotation.hadamard(100) is None  # 100 = 4·25, 24 is no prime: nothing here builds it
    q, basis = rotation.residual_rotation(100, "hadamard", seed=1)
    assert basis == "orthogonal"
    np.testing.assert_allclose(q @ q.T, np.eye(100), atol=1e-12)
    q2, _ = rotation.residual_rotation(100, "hadamard", seed=2)
    assert not np.allclose(q, q2)  # the seed matters, and is recorded


@pytest.mark.parametrize(("name", "block"), [("llama", 32), ("mistral", 32), ("qwen2", 32), ("qwen2", 0),
                                                 ("phi3", 32)])
def test_full_rotation_keeps_float_parity(name: str, block: int, tiny_model: Any, tmp_path: Path) -> None:
    src = load_source(str(tiny_model(name)))
    plain = export(src, AVX2, tmp_path / "plain", parity=False)
    rot = RotateSettings(mode="full", block=block, seed=7)
    rotated = export(src, AVX2, tmp_path / "rot", rotate=rot)
    record = json.loads((rotated.path / "export.json").read_text())
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    assert record["rotation"]["mode"] == "full" and record["rotation"]["seed"] == 7
    assert record["rotation"]["basis"] == "hadamard"  # hidden 64: Sylvester
    g, g0 = _graph(rotated.path), _graph(plain.path)
    names = [i.name for i in g.initializer]
    assert len(names) == len(set(names))  # the per-layer Hadamard's shape constants are written once
    layers = src.config["num_hidden_layers"]
    online = [n for n in g.node if n.op_type == "MatMul" and "/mlp/rotate/" in n.name]
    assert len(online) == layers * (1 if block else 2)  # block 0: all channels, as two Kronecker factors
    # The weights really moved (a no-op rotation would pass parity too); the function did not.
    emb, emb0 = _init(g, "model.embed_tokens.weight"), _init(g0, "model.embed_tokens.weight")
    assert not np.allclose(emb, emb0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), np.linalg.norm(emb0, axis=1), rtol=1e-5)
    np.testing.assert_allclose(_greedy_logits(rotated.path), _greedy_logits(plain.path), atol=2e-4, rtol=1e-4)


def test_tied_model_keeps_lm_head_equal_to_embedding(tiny_model: Any, tmp_path: Path) -> None:
    folder = tmp_path / "tied-src"
    shutil.copytree(tiny_model("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    src = load_source(str(folder))
    rotated = export(src, AVX2, tmp_path / "rot", rotate=RotateSettings(mode="heads", basis="orthogonal", seed=3))
    record = json.loads((rotated.path / "export.json").read_text())
    assert record["parity"]["top1_agreement"] == 1.0 and record["rotation"]["basis"] == "orthogonal"
    assert record["rotation"]["lm_head"].startswith("tied")
    g = _graph(rotated.path)
    np.testing.assert_array_equal(_init(g, "lm_head.weight"), _init(g, "model.embed_tokens.weight").T)
    assert any(n.name == "/model/rotate/norm_gain/MatMul" for n in g.node)


def test_compress_keeps_the_rotation_float(tiny_model: Any, tmp_path: Path) -> None:
    from edgekit.compress import compress

    src = load_source(str(tiny_model("llama")))
    rotated = export(src, AVX2, tmp_path / "rot", parity=False, rotate="full")
    int8 = compress(rotated, "int8-weight", AVX2, tmp_path / "int8", calibration_samples=2, checks_enabled=False)
    nodes = _graph(int8.path).node
    assert {n.op_type for n in nodes if "/rotate/" in n.name and "MatMul" in n.op_type} == {"MatMul"}
    assert sum(n.op_type == "MatMulNBits" for n in nodes) >= 4 * src.config["num_hidden_layers"]
    assert int8.meta["export"]["rotation"]["mode"] == "full"
    # A rotated export takes the target's larger int8 block (x86: 64; unrotated stays 32).
    blocks = {helper.get_attribute_value(a) for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name == "block_size"}
    assert blocks == {64}


def test_rotation_off_is_recorded(tiny_onnx: Any) -> None:
    assert tiny_onnx("llama").meta["rotation"] == {"mode": "off"}


def test_rotation_refused_where_it_cannot_apply(tiny_model: Any, tmp_path: Path) -> None:
    llama = load_source(str(tiny_model("llama")))
    with pytest.raises(UnsupportedError, match="fused writer"):
        export(llama, AVX2, tmp_path / "x", graph="optimum", rotate="residual")
    res = run_cli("export", str(tiny_model("gpt2")), "--target", "x86-avx2", "-o", str(tmp_path / "y"),
                  "--rotate", "full")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--rotate" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()
    bad = run_cli("export", str(tiny_model("llama")), "--target", "x86-avx2", "-o", str(tmp_path / "z"),
                  "--rotate", "sideways")
    assert bad.returncode == 2 and not (tmp_path / "z").exists()


def test_rotate_settings_are_strict() -> None:
    from pydantic import ValidationError

    from edgekit.specs import ExportSettings

    assert ExportSettings().rotate.mode == "off"  # plain exports are not rotated
    assert ExportSettings(rotate={"mode": "full", "block": 0, "seed": 3}).rotate.block == 0  # type: ignore[arg-type]
    for bad in ({"mode": "full", "block": 48}, {"mode": "sideways"}, {"mode": "full", "size": 32}):
        with pytest.raises(ValidationError):
            ExportSettings(rotate=bad)  # type: ignore[arg-type]

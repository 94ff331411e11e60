from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.catalog import load_target
from edgekit.errors import ParityError
from edgekit.export import export
from edgekit.export.parity import check_parity
from edgekit.source import load_source


def _corrupt(model_file: Path, factor: float) -> None:
    """Scale the largest 2-D weight: the graph still runs, its answers change."""
    proto = onnx.load(str(model_file))
    inits = [i for i in proto.graph.initializer if len(i.dims) == 2]
    victim = max(inits, key=lambda i: i.dims[0] * i.dims[1])
    arr = numpy_helper.to_array(victim) * factor
    victim.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), victim.name))
    onnx.save(proto, str(model_file))


@pytest.mark.parametrize("name", ["llama", "bert-cls"])
def test_corrupted_graph_fails_parity(name: str, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = load_source(str(tiny_model(name)))
    art = export(src, load_target("x86-avx2"), tmp_path / "x")
    assert check_parity(src, art.model_file).passed
    broken = tmp_path / "broken"
    shutil.copytree(art.path, broken)
    _corrupt(broken / "model.onnx", 3.0)
    with pytest.raises(ParityError) as info:
        check_parity(src, broken / "model.onnx")
    msg = info.value.one_line()
    assert "logits" in msg and "max abs diff" in msg and "\n" not in msg


def test_parity_error_exit_2_and_nothing_left(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A graph that the exporter got wrong (simulated by corrupting optimum's output) never ships."""
    import edgekit.export as ex

    real = ex._optimum_export

    def broken_export(source, raw, opset):  # type: ignore[no-untyped-def]
        real(source, raw, opset)
        _corrupt(raw / "model.onnx", 0.0)

    monkeypatch.setattr(ex, "_optimum_export", broken_export)
    out = tmp_path / "out"
    with pytest.raises(ParityError):
        export(load_source(str(tiny_model("gpt2"))), load_target("x86-avx2"), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []

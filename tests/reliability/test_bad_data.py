"""Bad text files where edgekit expects data: eval data for bench, calibration text for compress."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.helpers import assert_clean_failure


@pytest.fixture
def exported(tiny_onnx) -> Path:  # type: ignore[no-untyped-def]
    return Path(tiny_onnx("llama").path)


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.txt"
    if kind == "non-utf8":
        path.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("cp1252") * 20)
    elif kind == "empty":
        path.write_text("\n\n   \n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize(("kind", "word"), [("missing", "not found"), ("non-utf8", "UTF-8"), ("empty", "empty"),
                                            ("directory", "cannot read"), ("binary", "UTF-8")])
def test_bench_bad_eval_data(kind: str, word: str, exported: Path, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _bad_file(tmp_path, kind)
    out = tmp_path / "report.json"
    res = run_cli("bench", str(exported), "--source", str(tiny_model("llama")), "--eval-data", str(data),
                  "-o", str(out), "--max-time", "0.5", "--eval-tokens", "32")
    assert_clean_failure(res, 2, word, data.name)
    assert not out.exists()


@pytest.mark.parametrize(("kind", "word"), [("missing", "not found"), ("non-utf8", "UTF-8"), ("empty", "empty")])
def test_compress_bad_calibration(kind: str, word: str, exported: Path, tmp_path: Path) -> None:
    data = _bad_file(tmp_path, kind)
    out = tmp_path / "q"
    res = run_cli("compress", str(exported), "--method", "int4-gptq", "--target", "x86-avx2", "-o", str(out),
                  "--calibration", str(data))
    assert_clean_failure(res, 2, word, out=out)


def test_bench_source_mismatch(exported: Path, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("bench", str(exported), "--source", str(tiny_model("bert-emb")), "--max-time", "0.5")
    assert_clean_failure(res, 2, "wrong --source")


def test_bench_not_a_model_folder(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("bench", str(tmp_path), "--source", str(tiny_model("llama")))
    assert_clean_failure(res, 2, "model.onnx")

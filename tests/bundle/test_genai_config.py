"""genai_config.json in bundles: written from the graph, hashed, and checked by `edgekit verify` (no GenAI needed).

tests/bundle/test_genai.py loads the same bundles with onnxruntime-genai itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgekit.bundle import MANIFEST, sha256_file
from edgekit.bundle.genai import GENAI_FILE, read_graph_io
from tests.conftest import run_cli

FAST = ("--eval-tokens", "48", "--max-time", "0.5")


def build(src: Path, out: Path, method: str = "fp32") -> Path:
    res = run_cli("build", str(src), "--profile", "local", "--method", method, "-o", str(out), *FAST)
    assert res.returncode in (0, 1) and (out / MANIFEST).is_file(), res.stderr  # 1: a tiny model may fail its gate
    return out


@pytest.fixture(scope="module")
def fused_bundle(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return build(tiny_model("llama"), tmp_path_factory.mktemp("genai") / "llama-fp32")


def _copy_edited(bundle: Path, dst: Path, edit: Any, name: str = GENAI_FILE) -> Path:
    """A copy of `bundle` with one file edited and its manifest entry rehashed, so only the content is wrong."""
    shutil.copytree(bundle, dst)
    edit(dst / name)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_file(dst / name), "bytes": (dst / name).stat().st_size}
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def _edit_json(change: Any) -> Any:
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def test_fused_bundle_carries_a_hashed_genai_config_read_from_its_graph(fused_bundle: Path) -> None:
    manifest = json.loads((fused_bundle / MANIFEST).read_text())
    assert manifest["files"][GENAI_FILE]["sha256"] == sha256_file(fused_bundle / GENAI_FILE)
    genai = manifest["runtimes"]["onnxruntime-genai"]
    assert genai["supported"] is True and genai["config"] == GENAI_FILE and genai["version"] == ">=0.15.2"
    assert manifest["runtimes"]["edgekit-python"]["supported"] is True

    config = json.loads((fused_bundle / GENAI_FILE).read_text())
    model, decoder = config["model"], config["model"]["decoder"]
    io = read_graph_io(fused_bundle / decoder["filename"])
    # tests/tiny.py: 4 layers, 4 heads, 2 KV heads of 16, 256 positions, eos = bos = 0, pad = 1.
    assert (decoder["num_hidden_layers"], decoder["num_attention_heads"], decoder["num_key_value_heads"],
            decoder["head_size"], model["context_length"]) == (4, 4, 2, 16, 256)
    assert (model["eos_token_id"], model["bos_token_id"], model["pad_token_id"], model["type"]) == (0, 0, 1, "llama")
    assert set(decoder["inputs"].values()) <= set(io.inputs) | {"past_key_values.%d.key", "past_key_values.%d.value"}
    assert config["search"]["past_present_share_buffer"] is True and config["search"]["do_sample"] is False
    # The profile's threads and the target's providers (CPU is GenAI's default: no provider entry).
    assert decoder["session_options"]["intra_op_num_threads"] == manifest["runtime"]["threads"] == 1
    assert decoder["session_options"]["provider_options"] == []

    res = run_cli("verify", str(fused_bundle), "--json")
    assert res.returncode == 0, res.stderr
    assert "matches model.onnx" in json.loads(res.stdout)["genai"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["model"]["decoder"]["inputs"].update(attention_mask="mask"), "names input 'mask' the graph lacks"),
    (lambda c: c["model"]["decoder"]["outputs"].update(logits="scores"), "names output 'scores' the graph lacks"),
    (lambda c: c["model"]["decoder"]["inputs"].pop("attention_mask"), "'attention_mask' is required"),
    (lambda c: c["model"]["decoder"].update(num_hidden_layers=5), "names input 'past_key_values.4.key'"),
    (lambda c: c["model"]["decoder"].update(head_size=32), "head_size is 32, the graph's KV cache has 16"),
    (lambda c: c["model"].update(context_length=4096), "context_length 4096 exceeds the graph's 256"),
    (lambda c: c["model"]["decoder"].update(filename="other.onnx"), "names decoder file 'other.onnx'"),
])
def test_verify_fails_when_the_genai_config_disagrees_with_the_graph(fused_bundle: Path, tmp_path: Path, change: Any,
                                                                     message: str) -> None:
    bad = _copy_edited(fused_bundle, tmp_path / "bad", _edit_json(change))
    res = run_cli("verify", str(bad))
    assert res.returncode == 1 and message in res.stderr and GENAI_FILE in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _add_input(path: Path, *, default: bool) -> None:
    """A graph input GenAI does not know (as `num_logits_to_keep` once was), with or without a default value."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("extra_switch", TensorProto.INT64, []))
    if default:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(0, dtype=np.int64), "extra_switch"))
    onnx.save_model(model, str(path))


def test_a_graph_input_genai_never_feeds_fails_verify_unless_it_has_a_default(fused_bundle: Path, tmp_path: Path) -> None:
    bad = _copy_edited(fused_bundle, tmp_path / "bad", lambda p: _add_input(p, default=False), name="model.onnx")
    res = run_cli("verify", str(bad))
    assert res.returncode == 1, res.stderr
    assert "graph input 'extra_switch' is required but the config never feeds it" in res.stderr
    # An overridable initializer is optional: GenAI may leave it out, so the bundle verifies.
    good = _copy_edited(fused_bundle, tmp_path / "good", lambda p: _add_input(p, default=True), name="model.onnx")
    assert run_cli("verify", str(good)).returncode == 0


def test_manifest_and_files_must_agree_about_genai(fused_bundle: Path, tmp_path: Path) -> None:
    def drop(path: Path) -> None:
        manifest = json.loads(path.read_text())
        del manifest["files"][GENAI_FILE]
        path.write_text(json.dumps(manifest))

    shutil.copytree(fused_bundle, tmp_path / "b")
    (tmp_path / "b" / GENAI_FILE).unlink()
    drop(tmp_path / "b" / MANIFEST)
    res = run_cli("verify", str(tmp_path / "b"))
    assert res.returncode == 1 and f"{GENAI_FILE} is not in the bundle" in res.stderr, res.stderr


@pytest.mark.parametrize(("name", "reason"), [("gpt2", "traced (optimum) decoder graph"),
                                               ("bert-emb", "onnxruntime-genai runs generative decoders only")])
def test_graphs_genai_cannot_drive_get_a_reason_not_a_config(tiny_model, tmp_path: Path, name: str,  # type: ignore[no-untyped-def]
                                                             reason: str) -> None:
    out = build(tiny_model(name), tmp_path / name)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = manifest["runtimes"]["onnxruntime-genai"]
    assert entry["supported"] is False and reason in entry["reason"]
    assert not (out / GENAI_FILE).exists() and GENAI_FILE not in manifest["files"]
    res = run_cli("verify", str(out), "--json")
    assert res.returncode == 0 and "not expressible" in json.loads(res.stdout)["genai"], res.stderr


def test_search_defaults_come_from_the_generation_config(fused_bundle: Path, tmp_path: Path) -> None:
    from edgekit.bundle.genai import runtimes_for

    folder = shutil.copytree(fused_bundle, tmp_path / "b")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(do_sample=True, temperature=0.7, top_p=0.9, top_k=None, repetition_penalty=1.1, eos_token_id=[0, 5])
    (folder / "generation_config.json").write_text(json.dumps(gen))
    _, config = runtimes_for(folder, "text-generation", providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                             threads=4)
    assert config is not None
    search = config["search"]
    assert (search["do_sample"], search["temperature"], search["top_p"], search["top_k"], search["repetition_penalty"]) \
        == (True, 0.7, 0.9, 50, 1.1)
    assert config["model"]["eos_token_id"] == [0, 5] and config["model"]["pad_token_id"] == 1
    options = config["model"]["decoder"]["session_options"]
    assert options["provider_options"] == [{"cuda": {}}] and options["intra_op_num_threads"] == 4

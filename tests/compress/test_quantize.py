"""Quantization on tiny exported fixtures: every method runs in onnxruntime (with KV cache), shrinks the model,
records honestly what it did; keep-fp, fallback, GPT-2's Gemm, encoders, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgekit.artifact import OnnxArtifact
from edgekit.catalog import load_target
from edgekit.compress import checks, compress, graph, method_spec
from edgekit.compress.calibration import decoder_feeds, token_sequences
from edgekit.compress.checks import TOP1_FLOOR
from edgekit.compress.specs import DynamicInt8Spec, StaticInt8Spec, WeightOnlySpec
from edgekit.data import load_texts
from edgekit.errors import ConfigError, InputError, UnsupportedError
from edgekit.runtime import Decoder, make_session
from tests.conftest import run_cli

AVX2 = load_target("x86-avx2")
METHODS = [("fp16", "cuda"), ("int8-weight", "x86-avx2"), ("int8-dynamic", "x86-avx2"),
           ("int8-static", "arm64"), ("int4-rtn", "x86-avx2"), ("int4-hqq", "x86-avx2"), ("int4-gptq", "x86-avx2")]


@pytest.fixture
def exported(tiny_onnx: Any) -> Any:
    """The session's tiny exports (tests/conftest.py `tiny_onnx`)."""
    return tiny_onnx


def _ops(folder: Path) -> dict[str, int]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _decode_with_cache(art: OnnxArtifact) -> tuple[np.ndarray, np.ndarray]:
    """Prefill 8 tokens, decode 3 with the cache; return the last step's logits and the full-forward ones."""
    dec = Decoder(art.session())
    ids = list(range(5, 13))
    logits, cache = dec.forward(np.asarray([ids], dtype=np.int64), None, 0)
    for _ in range(3):
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        logits, cache = dec.forward(np.asarray([[nxt]], dtype=np.int64), cache, len(ids) - 1)
    return logits[0, -1], dec.logits(ids)[-1]


@pytest.mark.parametrize(("method", "target"), METHODS)
def test_every_method_runs_with_kv_cache_and_shrinks(method: str, target: str, exported: Any, tmp_path: Path) -> None:
    parent = exported("llama")
    out = compress(parent, method, load_target(target), tmp_path / method, calibration_samples=4)
    assert out.method == method and out.task == "text-generation"
    assert out.size_mb < parent.size_mb * (0.6 if method != "int4-hqq" else 0.5)
    step, full = _decode_with_cache(out)
    assert np.isfinite(step).all()
    # The cached decode must compute what a full forward computes (same graph, same weights); dynamic int8
    # quantizes activations with per-call ranges, so there the two agree only closely.
    if method == "int8-dynamic":
        assert np.corrcoef(step, full)[0, 1] > 0.98
    else:
        assert np.abs(step - full).max() < 0.05 * max(1.0, float(np.abs(full).max()))
    rec = json.loads((out.path / "compress.json").read_text())
    assert rec["schema"] == "edgekit/compress@1" and rec["method"] == method and rec["target"] == target
    assert rec["with_past"] is True and rec["export"]["method"] == "fp32"
    assert rec["size_mb_before"] == pytest.approx(parent.size_mb, abs=1e-3)
    assert rec["size_mb"] == pytest.approx(out.size_mb, abs=1e-3)
    assert rec["nodes"]["quantized"] > 0
    # The recorded check is the agreement of this variant with its parent, recomputed here from the two graphs.
    # Same calibration text, same 4 sequences; a tie flipped by thread scheduling may move it by a token or two.
    seqs = token_sequences(parent.path, load_texts(None, default="calibration", n=32), 4)
    again = checks.decoder_agreement(make_session(parent.model_file), make_session(out.model_file), seqs)
    assert again["tokens"] == rec["check"]["tokens"]
    assert abs(again["top1_agreement"] - rec["check"]["top1_agreement"]) <= 2 / again["tokens"]
    assert ("accuracy_warning" in rec) == (rec["check"]["top1_agreement"] < TOP1_FLOOR)
    assert {"prefill", "decode"} <= set(rec["speed"]["cases"])
    assert rec["peak_rss_mb"] > 0 and rec["timings_s"]["total"] > 0
    assert (out.path / "tokenizer.json").is_file() and (out.path / "config.json").is_file()
    assert not list(tmp_path.glob(".*tmp-*")) and not (out.path / ".work").exists()


@pytest.mark.parametrize("embed_bits", [8, 4])
def test_decisions_match_the_graph(embed_bits: int, exported: Any, tmp_path: Path) -> None:
    parent = exported("llama")
    out = compress(parent, method_spec("int4-rtn", AVX2, embed_bits=embed_bits), AVX2, tmp_path / "q")
    nodes = out.meta["nodes"]
    ops = _ops(out.path)
    assert ops.get("GatherBlockQuantized") == 1 and "Gather" in ops  # shape Gathers stay
    emb = [graph.token_embedding(onnx.load(str(parent.model_file)), parent.config["vocab_size"])]
    assert nodes["decisions"][emb[0]] == f"int{embed_bits}"
    int4 = [n for n, d in nodes["decisions"].items() if d == "int4" and n not in emb]
    int8 = [n for n, d in nodes["decisions"].items() if d == "int8" and n not in emb]
    assert len(int8) == 1 and "lm_head" in int8[0]  # the lm_head stays at 8 bit by default
    assert ops["MatMulNBits"] == len(int4) + len(int8)
    model = onnx.load(str(out.path / "model.onnx"))
    bits = sorted(next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node if n.op_type == "MatMulNBits")
    assert bits.count(8) == 1 and bits.count(4) == len(bits) - 1
    # The quantized table must still be the embedding: look tokens up in both graphs' embedding outputs.
    gbq = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert next((a.i for a in gbq.attribute if a.name == "bits"), 4) == embed_bits
    _assert_embedding_close(parent, out, gbq.output[0], tol=0.02 if embed_bits == 8 else 0.2)


def _assert_embedding_close(parent: OnnxArtifact, out: OnnxArtifact, name: str, tol: float) -> None:
    import onnxruntime as ort

    tables = []
    for art in (parent, out):
        model = onnx.load(str(art.model_file))
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        sess = ort.InferenceSession(model.SerializeToString())
        dec = Decoder(sess)
        feeds = {"input_ids": np.arange(20, dtype=np.int64)[None, :], **dec.empty_past(1)}
        if dec.keeps_last:  # fused graphs since issue 18: how many positions get logits (0 = all)
            feeds["num_logits_to_keep"] = np.zeros(1, dtype=np.int64)
        feeds["attention_mask"] = np.ones((1, 20), dtype=np.int64)
        if "position_ids" in dec.input_names:
            feeds["position_ids"] = np.arange(20, dtype=np.int64)[None, :]
        tables.append(sess.run([name], feeds)[0])
    rel = np.linalg.norm(tables[0] - tables[1]) / np.linalg.norm(tables[0])
    assert rel < tol


def test_keep_fp_is_honoured(exported: Any, tmp_path: Path) -> None:
    spec = method_spec("int8-weight", AVX2, keep_fp=["layers.0/"])
    out = compress(exported("llama"), spec, AVX2, tmp_path / "q")
    decisions = out.meta["nodes"]["decisions"]
    kept = {n for n, d in decisions.items() if d == "kept fp32: --keep-fp"}
    assert kept and all("layers.0/" in n for n in kept)
    model = onnx.load(str(out.path / "model.onnx"))
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert kept <= matmuls
    assert not any("layers.0/" in n.name for n in model.graph.node if n.op_type == "MatMulNBits")


def test_max_top1_drop_keeps_sensitive_matmuls(exported: Any, tmp_path: Path) -> None:
    parent = exported("llama")
    plain = compress(parent, "int4-rtn", AVX2, tmp_path / "plain", calibration_samples=4)
    out = compress(parent, "int4-rtn", AVX2, tmp_path / "fb", calibration_samples=4, max_top1_drop=0.05)
    fb = out.meta["fallback"]
    assert fb["steps"][0]["score"] == plain.meta["check"]["top1_agreement"]
    assert len(fb["steps"]) > 1 and fb["kept"]
    assert out.meta["check"]["top1_agreement"] > plain.meta["check"]["top1_agreement"]
    assert fb["held"] == (1 - out.meta["check"]["top1_agreement"] <= 0.05)
    assert fb["to"] == "int8"  # a 4-bit method falls back to 8 bit, not float
    kept = {k["name"] for k in fb["kept"] if "lm_head" not in k["name"]}
    assert kept and all(out.meta["nodes"]["decisions"][n] == "int8: sensitivity fallback" for n in kept)
    model = onnx.load(str(out.path / "model.onnx"))
    bits8 = [n for n in model.graph.node if n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 8 for a in n.attribute)]
    assert len(bits8) == len(kept) + 1
    assert out.size_mb > plain.size_mb


def test_gpt2_gemm_is_converted_and_quantized(exported: Any, tmp_path: Path) -> None:
    parent = exported("gpt2")
    gemms = _ops(parent.path).get("Gemm", 0)
    out = compress(parent, "int4-rtn", AVX2, tmp_path / "q")
    converted = out.meta["nodes"]["converted_gemm"]
    assert len(converted) == gemms
    assert all(out.meta["nodes"]["decisions"][n] == "int4" for n in converted)
    assert _ops(out.path).get("Gemm", 0) == 0
    step, full = _decode_with_cache(out)
    assert np.abs(step - full).max() < 0.05 * max(1.0, float(np.abs(full).max()))


def test_encoder_dynamic_int8_cosine(exported: Any, tmp_path: Path) -> None:
    out = compress(exported("bert-emb"), "int8-dynamic", AVX2, tmp_path / "q")
    check = out.meta["check"]
    assert "cosine_mean" in check and check["cosine_mean"] > 0.9
    assert out.meta["with_past"] is False and out.size_mb < exported("bert-emb").size_mb


def test_collapse_is_recorded_as_warning(exported: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A variant whose answers differ from its parent's (forced here: the check sees a graph that agrees on half
    # the tokens) must be recorded with a warning that names the method, the figure and the floor.
    real = checks.decoder_agreement
    monkeypatch.setattr(checks, "decoder_agreement", lambda *a: {**real(*a), "top1_agreement": 0.5})
    out = compress(exported("llama"), "int8-dynamic", AVX2, tmp_path / "q")
    assert out.meta["check"]["top1_agreement"] == 0.5 and out.meta["check"]["floor"] == TOP1_FLOOR
    warning = out.meta["accuracy_warning"]
    assert "int8-dynamic" in warning and "0.500" in warning and f"< {TOP1_FLOOR}" in warning and "int8-weight" in warning
    assert json.loads((out.path / "compress.json").read_text())["accuracy_warning"] == warning


def test_agreeing_variant_has_no_warning(exported: Any, tmp_path: Path) -> None:
    # fp16 keeps the tiny random model's answers (its int8 variants already lose ~12 % of top-1 on it).
    out = compress(exported("llama"), "fp16", load_target("cuda"), tmp_path / "q")
    assert out.meta["check"]["top1_agreement"] >= TOP1_FLOOR and "accuracy_warning" not in out.meta


def test_target_defaults_and_overrides() -> None:
    # AVX2: u8u8 with all 8 weight bits for dynamic int8; static int8 keeps u8s8 with reduce_range.
    assert method_spec("int8-dynamic", AVX2) == DynamicInt8Spec(weight_type="quint8", per_channel=True, reduce_range=False)
    static = method_spec("int8-static", AVX2)
    assert isinstance(static, StaticInt8Spec) and (static.weight_type, static.reduce_range) == ("qint8", True)
    assert isinstance(arm := method_spec("int8-dynamic", load_target("arm64")), DynamicInt8Spec)
    assert arm.reduce_range is False
    hqq = method_spec("int4-hqq", AVX2, block_size=16)
    assert isinstance(hqq, WeightOnlySpec) and (hqq.bits, hqq.block_size, hqq.algo, hqq.lm_head_bits) == (4, 16, "hqq", 8)
    with pytest.raises(ConfigError, match="power of two"):
        method_spec("int4-rtn", AVX2, block_size=48)
    with pytest.raises(ConfigError, match="block_size"):
        method_spec("int8-dynamic", AVX2, block_size=32)
    with pytest.raises(ConfigError, match="not supported by target"):
        method_spec("fp16", AVX2)
    with pytest.raises(UnsupportedError):
        method_spec("int3", AVX2)


def test_calibration_feeds_carry_a_real_cache(exported: Any) -> None:
    parent = exported("llama")
    seqs = token_sequences(parent.path, ["The quick brown fox jumps over the lazy dog again and again."] * 8, 2)
    feeds = decoder_feeds(parent.session(), seqs)
    past = [k for k in feeds[1] if k.startswith("past_key_values")]
    assert past and feeds[0][past[0]].shape[2] == 0
    assert feeds[1]["input_ids"].shape == (1, 1) and feeds[1][past[0]].shape[2] == len(seqs[0]) - 1
    assert np.abs(feeds[1][past[0]]).sum() > 0


def test_compressed_model_is_not_compressed_again(exported: Any, tmp_path: Path) -> None:
    out = compress(exported("llama"), "int8-weight", AVX2, tmp_path / "q")
    with pytest.raises(UnsupportedError, match="already int8-weight"):
        compress(out, "int4-rtn", AVX2, tmp_path / "q2")


def test_bad_options_are_input_errors(exported: Any, tmp_path: Path) -> None:
    parent = exported("llama")
    with pytest.raises(InputError, match="must differ"):
        compress(parent, "int8-weight", AVX2, parent.path)
    with pytest.raises(InputError, match="max-top1-drop"):
        compress(parent, "int8-weight", AVX2, tmp_path / "q", max_top1_drop=2.0)
    with pytest.raises(InputError):
        compress(parent, "int8-static", AVX2, tmp_path / "q", calibration=tmp_path / "missing.txt")
    assert not (tmp_path / "q").exists()


def test_cli_unsupported_method_exits_2(exported: Any, tmp_path: Path) -> None:
    res = run_cli("compress", str(exported("llama").path), "--method", "fp16", "--target", "x86-avx2",
                  "-o", str(tmp_path / "q"))
    assert res.returncode == 2 and "not supported by target" in res.stderr
    assert not (tmp_path / "q").exists()


def test_cli_json_from_a_source(tiny_model: Any, tmp_path: Path) -> None:
    res = run_cli("compress", str(tiny_model("qwen2")), "--method", "int4-hqq", "--target", "x86-avx2",
                  "-o", str(tmp_path / "q"), "--keep-fp", "lm_head", "--calibration-samples", "2", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["method"] == "int4-hqq" and data["export"]["schema"] == "edgekit/export@1"
    head = [n for n in data["nodes"]["decisions"] if "lm_head" in n]
    assert head and all(data["nodes"]["decisions"][n] == "kept fp32: --keep-fp" for n in head)
    assert OnnxArtifact.load(tmp_path / "q").method == "int4-hqq"


def test_cli_accuracy_level(exported: Any, tmp_path: Path) -> None:
    res = run_cli("compress", str(exported("llama").path), "--method", "int4-rtn", "--target", "x86-avx2",
                  "-o", str(tmp_path / "q"), "--accuracy-level", "1", "--calibration-samples", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["settings"]["accuracy_level"] == 1
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    levels = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {1}
    bad = run_cli("compress", str(exported("llama").path), "--method", "int8-dynamic", "--target", "x86-avx2",
                  "-o", str(tmp_path / "d"), "--accuracy-level", "1")
    assert bad.returncode == 2 and "--accuracy-level" in bad.stderr and not (tmp_path / "d").exists()

"""Tied embeddings after quantization: the embedding Gather reads the lm_head's quantized blocks (one table).

On a tiny tied Llama: the gathered rows are exactly the lm_head's dequantized blocks (so both ends of the model
see the same quantized values), the graph holds one vocab-sized table instead of two, and the shared graph's
logits equal those of the same graph with the table stored twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgekit.artifact import OnnxArtifact
from edgekit.catalog import load_target
from edgekit.compress import compress, method_spec, shared
from edgekit.runtime import Decoder

AVX2 = load_target("x86-avx2")
# (method, overrides, bits the shared table gets): 8-bit symmetric lm_head (both defaults), 4-bit with and
# without zero points (packed two per byte, zero points padded per row).
CASES = [("int8-weight", {}, 8), ("int4-rtn", {}, 8), ("int4-rtn", {"lm_head_bits": 4}, 4),
         ("int4-rtn", {"lm_head_bits": 4, "symmetric": True}, 4)]


@pytest.fixture(scope="module")
def tied(tiny_onnx: Any) -> OnnxArtifact:
    art: OnnxArtifact = tiny_onnx("llama-tied")
    return art


def _inits(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path / "model.onnx"))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _run(model: onnx.ModelProto, outputs: list[str], ids: np.ndarray) -> list[np.ndarray]:
    for name in outputs:
        if name not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dec = Decoder(sess)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "num_logits_to_keep": np.zeros(1, np.int64),
             **dec.empty_past(1)}
    return list(sess.run(outputs, feeds))


def _dequantized_head(model: onnx.ModelProto) -> np.ndarray:
    """The lm_head weight [vocab, hidden] as MatMulNBits reads it: (q - zero point) · scale per block."""
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    a = {x.name: helper.get_attribute_value(x) for x in head.attribute}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    n, k, bits, block = a["N"], a["K"], a["bits"], a["block_size"]
    packed = inits[head.input[1]].reshape(n, -1)  # inputs: A, B, scales, zero points
    q = packed if bits == 8 else np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(n, -1)  # low nibble first
    blocks = k // block
    if len(head.input) > 3 and head.input[3]:
        zp = inits[head.input[3]].reshape(n, -1)
        zp = zp if bits == 8 else np.stack([zp & 0xF, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    else:
        zp = np.full((n, blocks), 2 ** (bits - 1))
    scales = _scales(model, inits, head.input[2]).reshape(n, blocks)
    q = q[:, :k].astype(np.float32).reshape(n, blocks, block) - zp[:, :, None]
    return (q * scales[:, :, None]).reshape(n, k)


def _scales(model: onnx.ModelProto, inits: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A scale tensor as the kernel reads it: an initializer, or a float16 one behind a Cast (compress/scales.py)."""
    if name in inits:
        return inits[name]
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.output[0] == name)
    return inits[cast.input[0]].astype(np.float32)


@pytest.mark.parametrize(("method", "overrides", "bits"), CASES)
def test_tied_embedding_reads_the_lm_head_blocks(method: str, overrides: dict[str, Any], bits: int, tied: OnnxArtifact,
                                                 tmp_path: Path) -> None:
    out = compress(tied, method_spec(method, AVX2, **overrides), AVX2, tmp_path / "q", checks_enabled=False)
    model = onnx.load(str(out.model_file))
    vocab, hidden = tied.config["vocab_size"], tied.config["hidden_size"]
    # One vocab-sized table: the lm_head's blocks; no float table and no second quantized one.
    tables = [i.name for i in model.graph.initializer if int(np.prod(i.dims)) >= vocab * hidden * bits // 8]
    assert len(tables) == 1 and "lm_head" in tables[0], tables
    gbq = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert next(a.i for a in gbq.attribute if a.name == "bits") == bits
    decision = out.meta["nodes"]["decisions"]["/model/embed_tokens"]
    assert decision == f"int{bits}: shared with the lm_head"
    ids = np.asarray([[3, 7, 100, 511, 0, 42, 7]], dtype=np.int64)
    rows = _run(model, [gbq.output[0]], ids)[0][0]
    np.testing.assert_allclose(rows, _dequantized_head(onnx.load(str(out.model_file)))[ids[0]], rtol=0, atol=1e-6)
    table = _inits(tied.path)["model.embed_tokens.weight"][ids[0]]
    assert np.linalg.norm(rows - table) / np.linalg.norm(table) < (0.01 if bits == 8 else 0.15)


def _unshared_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the embedding's view of the lm_head blocks stored as its own copy (two tables)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in twin.graph.initializer}
    keep = []
    for node in twin.graph.node:
        if node.op_type == "Reshape" and node.input[0] in inits and node.input[1] in inits:
            arr = np.array(inits[node.input[0]].reshape(inits[node.input[1]]), copy=True)
            twin.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del twin.graph.node[:]
    twin.graph.node.extend(keep)
    return twin


@pytest.mark.parametrize("method", ["int8-weight", "int4-rtn"])
def test_shared_graph_computes_what_two_tables_compute(method: str, tied: OnnxArtifact, tmp_path: Path) -> None:
    out = compress(tied, method, AVX2, tmp_path / "q", checks_enabled=False)
    model = onnx.load(str(out.model_file))
    twin = _unshared_twin(model)
    table = next(i.ByteSize() for i in model.graph.initializer if i.name.startswith("lm_head") and i.name.endswith("_Q8"))
    size = sum(i.ByteSize() for i in model.graph.initializer)
    assert sum(i.ByteSize() for i in twin.graph.initializer) >= size + table  # what sharing saves: a whole table
    ids = np.arange(3, 40, dtype=np.int64)[None, :]
    got, want = _run(model, ["logits"], ids)[0], _run(twin, ["logits"], ids)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_untied_model_keeps_its_own_table(tiny_onnx: Any, tmp_path: Path) -> None:
    untied = tiny_onnx("llama")
    model = onnx.load(str(untied.model_file))
    assert not shared.is_tied(model, "/model/embed_tokens", "/lm_head")
    out = compress(untied, "int8-weight", AVX2, tmp_path / "q", checks_enabled=False)
    assert out.meta["nodes"]["decisions"]["/model/embed_tokens"] == "int8"
    assert "model.embed_tokens.weight_Q8" in _inits(out.path)

"""onnxruntime-genai's `genai_config.json` for a bundle, and the check that it still describes the graph.

An app on a phone, a Jetson or a desktop links onnxruntime-genai (C, C++, C#, Java, Python), not edgekit. GenAI
drives a decoder from this one file: the graph's input/output names, the KV-cache layout, the token ids and the
search defaults. edgekit's fused decoder (edgekit.fused) is the graph GenAI's own model builder writes —
GroupQueryAttention fed `seqlens_k`/`total_sequence_length` computed from `attention_mask` inside the graph, one
[batch, kv_heads, max_length, head_dim] buffer per cache tensor bound as past and present — so the config says
exactly that (`past_present_share_buffer: true`, no position_ids). Everything is read from the graph itself where
the graph knows it, so a config can never promise an input the graph lacks. Graphs GenAI cannot drive as they are
(optimum's traced decoders, encoders) get no config and a manifest note that says why.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import VerifyFailed

log = logging.getLogger(__name__)

GENAI_FILE = "genai_config.json"
# The GenAI release the token-equality tests (tests/test_genai.py) run on; 0.16-0.18's model builder cannot
# import with transformers 4.57 (field-notes.md), the runtime itself reads the same config format.
GENAI_VERSION = "0.15.2"
GENAI_RUNTIME = "onnxruntime-genai"
# GenAI model types whose decoder it runs with the generic decoder-only pipeline (config.cpp's LLM list).
GENAI_TYPES = ("llama", "mistral", "qwen2", "phi3")
# onnxruntime provider name → GenAI's provider_options key; CPU is GenAI's default and is not listed.
_PROVIDERS = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml", "QNNExecutionProvider": "qnn",
              "WebGpuExecutionProvider": "webgpu", "OpenVINOExecutionProvider": "OpenVINO"}
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_PRESENT = re.compile(r"present\.(\d+)\.(key|value)")


@dataclass(frozen=True)
class GraphIO:
    """What GenAI must agree with: the graph's inputs (required ones apart) and outputs, with their shapes."""

    inputs: dict[str, list[Any]]
    required: frozenset[str]
    outputs: dict[str, list[Any]]
    metadata: dict[str, str]
    attention: dict[str, Any] | None  # the first GroupQueryAttention's attributes, None when there is none
    rotary_positions: int | None

    @property
    def layers(self) -> int:
        return len([n for n in self.inputs if _PAST.fullmatch(n) and n.endswith(".key")])


def read_graph_io(model_file: Path) -> GraphIO:
    """The graph's I/O and attention settings, read without loading the weights."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    inits = {t.name: list(t.dims) for t in graph.initializer}

    def dims(vi: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    inputs = {vi.name: dims(vi) for vi in graph.input}
    gqa = next((n for n in graph.node if n.op_type == "GroupQueryAttention"), None)
    attention = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute} if gqa is not None else None
    cos = inits.get(gqa.input[7]) if gqa is not None and len(gqa.input) > 7 else None
    return GraphIO(inputs=inputs, required=frozenset(n for n in inputs if n not in inits),
                   outputs={vi.name: dims(vi) for vi in graph.output},
                   metadata={p.key: p.value for p in model.metadata_props}, attention=attention,
                   rotary_positions=int(cos[0]) if cos else None)


def not_expressible(task: str, io: GraphIO, model_type: str) -> str | None:
    """Why GenAI cannot load this graph as it is (None when it can)."""
    if task != "text-generation":
        return f"a {task} graph: onnxruntime-genai runs generative decoders only; load model.onnx with onnxruntime"
    if io.metadata.get("edgekit.kv_cache") != "shared-buffer" or io.attention is None:
        return ("a traced (optimum) decoder graph: its KV cache is concatenated each step, not GenAI's shared "
                "past/present buffer; rebuild with --graph fused for a GenAI-loadable bundle")
    if model_type not in GENAI_TYPES:
        return f"model type '{model_type}' is not one onnxruntime-genai {GENAI_VERSION} drives ({', '.join(GENAI_TYPES)})"
    unknown = sorted(io.required - {"input_ids", "attention_mask"} - {n for n in io.inputs if _PAST.fullmatch(n)})
    if unknown:
        return f"graph input(s) {', '.join(unknown)} have no onnxruntime-genai equivalent"
    return None


def build_config(io: GraphIO, config: dict[str, Any], generation: dict[str, Any], *, filename: str,
                 providers: list[str], threads: int) -> dict[str, Any]:
    """genai_config.json for a fused decoder graph (call only when `not_expressible` is None)."""
    past = io.inputs["past_key_values.0.key"]
    heads = int((io.attention or {}).get("num_heads") or config["num_attention_heads"])
    context = io.rotary_positions or int(config.get("max_position_embeddings") or 2048)
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    first_eos = eos[0] if isinstance(eos, list) else eos
    decoder = {
        "session_options": _session_options(providers, threads),
        "filename": filename,
        "head_size": int(past[3]),
        "hidden_size": int(config.get("hidden_size") or heads * int(past[3])),
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "num_attention_heads": heads,
        "num_hidden_layers": io.layers,
        "num_key_value_heads": int(past[1]),
    }
    return {
        "model": {
            "bos_token_id": bos if bos is not None else first_eos,
            "context_length": context,
            "decoder": decoder,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else first_eos,
            "type": str(config.get("model_type")),
            "vocab_size": int(io.outputs["logits"][-1]) if isinstance(io.outputs["logits"][-1], int) else int(config["vocab_size"]),
        },
        "search": _search(generation, context),
    }


def _session_options(providers: list[str], threads: int) -> dict[str, Any]:
    options: list[dict[str, Any]] = [{_PROVIDERS[p]: {}} for p in providers if p in _PROVIDERS]
    skipped = [p for p in providers if p not in _PROVIDERS and p != "CPUExecutionProvider"]
    if skipped:
        log.warning("genai_config.json: no onnxruntime-genai name for %s; that provider is left out", ", ".join(skipped))
    return {"log_id": "edgekit", "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL", "provider_options": options}


def _search(generation: dict[str, Any], context: int) -> dict[str, Any]:
    """Search defaults from generation_config.json (what GenAI's builder copies), greedy unless it samples."""

    def get(key: str, default: float) -> float:
        value = generation.get(key)  # transformers writes null for unset fields
        return default if value is None else float(value)

    return {
        "do_sample": bool(generation.get("do_sample") or False),
        "early_stopping": True,
        "length_penalty": get("length_penalty", 1.0),
        # GenAI sizes the shared KV buffer to max_length: apps lower it per request (README, "Run a bundle").
        "max_length": context,
        "min_length": 0,
        "no_repeat_ngram_size": int(get("no_repeat_ngram_size", 0)),
        "num_beams": int(get("num_beams", 1)),
        "num_return_sequences": int(get("num_return_sequences", 1)),
        "past_present_share_buffer": True,
        "repetition_penalty": get("repetition_penalty", 1.0),
        "temperature": get("temperature", 1.0),
        "top_k": int(get("top_k", 50)),
        "top_p": get("top_p", 1.0),
    }


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def runtimes_for(folder: Path, task: str, *, providers: list[str], threads: int,
                 model_file: str = "model.onnx") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the manifest's `runtimes`, genai_config.json's content or None) for the model files in `folder`."""
    config = _json(folder / "config.json")
    io = read_graph_io(folder / model_file)
    runtimes: dict[str, Any] = {"edgekit-python": {"supported": True, "how": "edgekit run / edgekit.runtime.Model"}}
    reason = not_expressible(task, io, str(config.get("model_type")))
    if reason:
        runtimes[GENAI_RUNTIME] = {"supported": False, "reason": reason}
        return runtimes, None
    genai = build_config(io, config, _json(folder / "generation_config.json"), filename=model_file,
                         providers=providers, threads=threads)
    runtimes[GENAI_RUNTIME] = {"supported": True, "version": f">={GENAI_VERSION}", "config": GENAI_FILE,
                               "tokenizer": "tokenizer.json + tokenizer_config.json"}
    return runtimes, genai


# ---------------------------------------------------------------- verification


def check_bundle(folder: Path, manifest: dict[str, Any]) -> str:
    """Check the bundle's genai_config.json against its graph; raise VerifyFailed naming the mismatch."""
    entry = (manifest.get("runtimes") or {}).get(GENAI_RUNTIME)
    has_file = GENAI_FILE in manifest["files"]
    if entry is None and not has_file:
        return "no onnxruntime-genai entry (bundle predates it)"
    if entry is not None and not entry.get("supported"):
        if has_file:
            raise VerifyFailed(f"{folder}: {GENAI_FILE} is present but the manifest says GenAI cannot load this graph")
        return f"not expressible for onnxruntime-genai: {entry.get('reason')}"
    if not has_file:
        raise VerifyFailed(f"{folder}: the manifest promises onnxruntime-genai but {GENAI_FILE} is not in the bundle")
    try:
        genai = json.loads((folder / GENAI_FILE).read_text())
        decoder = genai["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VerifyFailed(f"{folder}: {GENAI_FILE} is not a GenAI decoder config ({type(exc).__name__}: {exc})") from exc
    filename = decoder.get("filename")
    if not isinstance(filename, str) or filename not in manifest["files"]:
        raise VerifyFailed(f"{folder}: {GENAI_FILE} names decoder file {filename!r}, which the bundle lacks")
    problems = config_mismatches(genai, read_graph_io(folder / filename))
    if problems:
        raise VerifyFailed(f"{folder}: {GENAI_FILE} does not match {filename}: {problems[0]}")
    return f"{GENAI_FILE} matches {filename}'s inputs, outputs and KV layout"


def config_mismatches(genai: dict[str, Any], io: GraphIO) -> list[str]:
    """Every way `genai` disagrees with the graph, most basic first (empty when GenAI can drive it)."""
    decoder = genai["model"]["decoder"]
    layers = int(decoder.get("num_hidden_layers", -1))
    named_in = _expand(decoder.get("inputs") or {}, layers, ("past_key_names", "past_value_names"))
    named_out = _expand(decoder.get("outputs") or {}, layers, ("present_key_names", "present_value_names"))
    problems = [f"it names input '{n}' the graph lacks" for n in named_in if n not in io.inputs]
    problems += [f"it names output '{n}' the graph lacks" for n in named_out if n not in io.outputs]
    problems += [f"graph input '{n}' is required but the config never feeds it" for n in sorted(io.required - set(named_in))]
    if layers != io.layers:
        problems.append(f"num_hidden_layers is {layers}, the graph has {io.layers} KV-cache layers")
    past = io.inputs.get("past_key_values.0.key")
    if past is not None and len(past) == 4:
        for key, axis in (("num_key_value_heads", 1), ("head_size", 3)):
            if decoder.get(key) != past[axis]:
                problems.append(f"{key} is {decoder.get(key)}, the graph's KV cache has {past[axis]}")
    if (genai.get("search") or {}).get("past_present_share_buffer") and io.metadata.get("edgekit.kv_cache") != "shared-buffer":
        problems.append("past_present_share_buffer is set but the graph does not update its cache in place")
    context = genai["model"].get("context_length")
    if io.rotary_positions and isinstance(context, int) and context > io.rotary_positions:
        problems.append(f"context_length {context} exceeds the graph's {io.rotary_positions} rotary positions")
    return problems


def _expand(names: dict[str, Any], layers: int, per_layer: tuple[str, ...]) -> list[str]:
    out = []
    for key, value in names.items():
        if not isinstance(value, str):
            continue
        per = key in per_layer and "%d" in value
        out.extend([value % i for i in range(max(layers, 0))] if per else [value])
    return out

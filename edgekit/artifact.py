"""OnnxArtifact: an exported or compressed model folder, the unit that flows export → compress → bench → bundle.

Layout (same for export and compress output):
    model.onnx [+ model.onnx.data]     the graph (+ external weights)
    config.json, generation_config.json, tokenizer files
    export.json | compress.json        what was done to get here (the newest record wins)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

MODEL_FILE = "model.onnx"
# Files a runtime needs besides the graph; copied from stage to stage and into bundles.
SIDE_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)
RECORDS = ("compress.json", "export.json")


@dataclass
class OnnxArtifact:
    path: Path
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "fp32"))

    @property
    def model_files(self) -> list[Path]:
        """The graph and its external data files (what `size_mb` counts and verify hashes)."""
        files = [self.model_file]
        files += sorted(p for p in self.path.iterdir() if p.is_file() and (p.suffix == ".data" or p.name.endswith(".onnx_data")))
        return files

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.model_files) / 1e6

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.path / "config.json"
        return json.loads(cfg.read_text()) if cfg.is_file() else {}

    def side_files(self) -> list[Path]:
        return [self.path / n for n in SIDE_FILES if (self.path / n).is_file()]

    @classmethod
    def load(cls, folder: Path | str) -> OnnxArtifact:
        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise InputError(f"{folder}: no {MODEL_FILE} (expected an edgekit export or compress output)")
        meta: dict[str, Any] = {}
        for name in RECORDS:
            if (folder / name).is_file():
                meta = json.loads((folder / name).read_text())
                break
        task = meta.get("task")
        if task is None:
            from edgekit.specs import detect_task

            cfg = folder / "config.json"
            if not cfg.is_file():
                raise InputError(f"{folder}: cannot tell the task (no export.json/compress.json/config.json)")
            task = detect_task(json.loads(cfg.read_text()))
        return cls(folder, str(task), meta)

    def session(self, *, threads: int = 1, providers: list[str] | tuple[str, ...] | None = None,
                prepack: bool = True) -> InferenceSession:
        """An onnxruntime session with a fixed thread count (reproducible latency) and the given providers
        (`prepack`: edgekit.runtime.make_session)."""
        from edgekit.runtime import make_session

        try:
            return make_session(self.model_file, threads=threads, providers=providers, prepack=prepack)
        except Exception as exc:
            raise InputError(f"{self.model_file}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc

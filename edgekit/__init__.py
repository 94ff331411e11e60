"""edgekit: budget-first edge deployment for language models.

The public API is loaded lazily so `import edgekit` imports neither torch nor onnxruntime:

    import edgekit
    src = edgekit.load_source("example:smollm2-135m")
    onnx = edgekit.export(src, edgekit.load_target("x86-avx2"), "out/x")
    q = edgekit.compress(onnx, "int8-weight", edgekit.load_target("x86-avx2"), "out/q")
    report = edgekit.bench(q, src, edgekit.load_profile("local"))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_source": "edgekit.source",
    "SourceModel": "edgekit.source",
    "load_profile": "edgekit.catalog",
    "load_target": "edgekit.catalog",
    "export": "edgekit.export",
    "OnnxArtifact": "edgekit.artifact",
    "compress": "edgekit.compress",
    "distill": "edgekit.distill",
    "bench": "edgekit.bench",
    "gate": "edgekit.gate",
    "write_bundle": "edgekit.bundle",
    "verify_bundle": "edgekit.bundle",
    "build": "edgekit.pipeline",
    "fit": "edgekit.fit",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

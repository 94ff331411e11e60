"""Compression: quantization (quantize.py, one spec + handler per method) and distillation (distill.py).

Cheap to import: the quantizers load onnxruntime only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.artifact import OnnxArtifact
    from edgekit.compress.specs import MethodSpec
    from edgekit.specs import Target

__all__ = ["compress", "method_spec"]


def compress(artifact: OnnxArtifact, method: str | MethodSpec, target: Target, out: Path | str,
             **options: Any) -> OnnxArtifact:
    """Quantize an exported fp32 folder for `target`; see `edgekit.compress.quantize.compress`."""
    from edgekit.compress.quantize import compress as run

    return run(artifact, method, target, out, **options)


def method_spec(name: str, target: Target, **overrides: Any) -> MethodSpec:
    from edgekit.compress.specs import method_spec as make

    return make(name, target, **overrides)

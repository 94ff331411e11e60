"""bench: measure an ONNX variant against its PyTorch source (speed, memory, fidelity with CIs).

Cheap to import (numpy only at module level): `edgekit.bench.measure` runs in an isolated process that
must load nothing but onnxruntime for the variant.
"""

from __future__ import annotations

from edgekit.bench.core import bench
from edgekit.bench.report import write_report

__all__ = ["bench", "write_report"]

"""What the bench ran on: CPU model, cores, ISA flags, memory, onnxruntime version and providers."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# ISA features that decide which kernels onnxruntime and torch pick (int8 dot products, fp16, wide vectors).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16")


def _cpuinfo() -> tuple[str, set[str]]:
    path = Path("/proc/cpuinfo")
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return model, flags


def _memory_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def host_info() -> dict[str, Any]:
    import onnxruntime as ort

    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "onnxruntime_version": ort.__version__,
        "providers": list(ort.get_available_providers()),
    }

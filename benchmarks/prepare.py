"""Build (once) and cache every model the benchmark compares, under ~/.cache/edgekit/bench.

Each builder returns the folder or raises; run.py records a failure as a failed variant, never a crash.
A folder is only cached once complete (built beside it, then renamed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GENAI_VERSION = "0.15.2"
TARGET = "x86-avx2"
# optimum's CPU optimization levels, strongest first (O4 is O3 + fp16, for GPUs). O2/O3 fuse Attention, which
# `onnxruntime quantize` 1.32 cannot type ("Unable to find data type for weight_name"), so run.py takes the
# strongest level whose export the quantizer accepts.
OPTIMUM_LEVELS = ("O3", "O2", "O1")


def cache_root() -> Path:
    root = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached(name: str, build: Callable[[Path], None], *, marker: str = "model.onnx") -> Path:
    """`cache/name`, built by `build(tmp)` into a temporary sibling on first use."""
    final = cache_root() / name
    if (final / marker).is_file() or any(final.glob(marker)):
        return final
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    build(tmp)
    os.replace(tmp, final)
    return final


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), check=False)
    if proc.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} ... exited {proc.returncode}: {tail[0][:300]}")


@functools.cache
def edgekit_fingerprint() -> str:
    """A hash of edgekit's code and target files: a cached edgekit build is reused only by the code that made it."""
    import edgekit

    root = Path(edgekit.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(root.rglob("*.py")) + sorted((root.parent / "targets").glob("*.yaml"))
    for f in files:
        h.update(str(f.relative_to(root.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def edgekit_cached(name: str, build: Callable[[Path], None], *, marker: str = "model.onnx") -> Path:
    """cached() under `name-<fingerprint>`; builds of `name` by other code versions are removed."""
    fp = edgekit_fingerprint()
    for old in cache_root().glob(f"{name}-*"):
        base, _, other = old.name.removesuffix(".partial").rpartition("-")
        if base == name and len(other) == len(fp) and other != fp:
            shutil.rmtree(old, ignore_errors=True)
    return cached(f"{name}-{fp}", build, marker=marker)


def edgekit_fp32(source: Any, name: str, graph: str = "auto", rotate: str = "off") -> Path:
    from edgekit.catalog import load_target
    from edgekit.export import export

    # Parity is skipped here: run.py measures every variant's fidelity against PyTorch itself.
    return edgekit_cached(
        name,
        lambda tmp: export(source, load_target(TARGET), tmp, parity=False, graph=graph, rotate=rotate) and None,
    )


def method_rotation(method: str) -> str:
    """The rotation `edgekit build --method METHOD` applies by default (the bench measures what users ship)."""
    from edgekit.catalog import load_target
    from edgekit.export.rotation import method_target

    return method_target(load_target(TARGET), method).export.rotate.mode


BUILD_RSS_ARGS = ["build", "example:smollm2-135m", "--profile", "local", "--method", "int8-weight"]


def build_memory() -> dict[str, Any]:
    """One `edgekit build` (SmolLM2, int8-weight) in its own process: build.json's memory record, the build's peak
    RSS beside the fp32 weights. Cached under edgekit's fingerprint, so unchanged code reuses the record (it says
    when it was measured); a failure comes back as {"error": ...}, never an exception."""
    record = "build_memory.json"

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        # --max-time only shortens the latency loops; the stages that hold memory run as users run them.
        args = [*BUILD_RSS_ARGS, "-o", str(tmp / "bundle"), "--max-time", "0.5"]
        log = cache_root() / "build-rss.log"
        # The edgekit this checkout holds, the one the fingerprint hashed.
        path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "edgekit", *args]
        t0 = time.perf_counter()
        with log.open("a") as fh:
            fh.write("$ edgekit " + " ".join(args) + "\n")
            fh.flush()
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env={**_env(), "PYTHONPATH": path}, check=False
            )
        built = tmp / "bundle" / "build.json"
        if not built.is_file():
            raise RuntimeError(f"edgekit build exited {proc.returncode} without build.json (log {log})")
        rec = json.loads(built.read_text())
        out = {
            "command": "edgekit " + " ".join(a if a != str(tmp / "bundle") else "OUT" for a in args),
            "exit_code": proc.returncode,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(time.perf_counter() - t0, 1),
            "memory": rec.get("memory"),
            "stages": rec.get("stages"),
        }
        shutil.rmtree(tmp / "bundle")
        (tmp / record).write_text(json.dumps(out, indent=1))

    try:
        folder = edgekit_cached("smollm2-build-rss-int8-weight", build, marker=record)
        result: dict[str, Any] = json.loads((folder / record).read_text())
        return result
    except (OSError, RuntimeError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def edgekit_compressed(fp32: Path, method: str, name: str, target: str = TARGET) -> Path:
    from edgekit.artifact import OnnxArtifact
    from edgekit.catalog import load_target
    from edgekit.compress import compress

    def build(tmp: Path) -> None:
        compress(OnnxArtifact.load(fp32), method, load_target(target), tmp, checks_enabled=False)

    return edgekit_cached(name, build)


def genai_venv() -> Path:
    """onnxruntime-genai's venv, beside the other peers' under the bench cache, named by its version."""
    return cache_root() / f"venv-genai-{GENAI_VERSION}"


def genai_python() -> Path:
    """The separate venv's interpreter, created on first use.

    It layers over the main venv's site-packages (a .pth file) so torch/transformers are not installed twice;
    its own site-packages come first, so only onnxruntime-genai (and anything it pins) is its own.
    """
    venv = genai_venv()
    py = venv / "bin" / "python"
    try:
        subprocess.run(
            [str(py), "-c", f"import onnxruntime_genai as g; assert g.__version__ == '{GENAI_VERSION}'"],
            check=True,
            capture_output=True,
            env=_env(),
        )
        return py
    except (OSError, subprocess.CalledProcessError):
        pass
    log = cache_root() / "genai-install.log"
    _run([sys.executable, "-m", "venv", str(venv)], log)
    site = next((venv / "lib").glob("python3*/site-packages"))
    main_site = next((Path(sys.prefix) / "lib").glob("python3*/site-packages"))
    (site / "zz_main_venv.pth").write_text(str(main_site) + "\n")
    _run([str(venv / "bin" / "pip"), "install", "-q", f"onnxruntime-genai=={GENAI_VERSION}"], log)
    return py


def genai_int4(hf: Path) -> Path:
    py = genai_python()

    def build(tmp: Path) -> None:
        log = cache_root() / "genai-build.log"
        _run(
            [
                str(py),
                "-m",
                "onnxruntime_genai.models.builder",
                "-m",
                str(hf),
                "-o",
                str(tmp),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(cache_root() / "genai-hfcache"),
            ],
            log,
        )
        # One intra-op thread, like every other variant.
        cfg_file = tmp / "genai_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["model"]["decoder"]["session_options"].update(
            {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
        )
        cfg_file.write_text(json.dumps(cfg, indent=4))

    return cached("genai-int4", build)


def optimum_fp32(hf: Path, optimize: str | None = None) -> Path:
    exe = Path(sys.executable).with_name("optimum-cli")
    extra = ["--optimize", optimize] if optimize else []
    return cached(
        f"minilm-optimum-fp32{'-' + optimize if optimize else ''}",
        lambda tmp: _run(
            [str(exe), "export", "onnx", "-m", str(hf), "--task", "feature-extraction", *extra, str(tmp)],
            cache_root() / "optimum.log",
        ),
    )


def host_target(isa: list[str]) -> str:
    """edgekit's target for this host's ISA, as optimum gets its strongest preset: on a VNNI host the AVX2 target's
    saturation-safe int8 (u8u8 dynamic, 7-bit static) would compare edgekit's weakest setting with optimum's best."""
    return "x86-avx512-vnni" if "avx512_vnni" in isa else TARGET


def optimum_preset(isa: list[str]) -> str:
    """optimum-cli's strongest quantize preset this host runs: VNNI int8 dot products when it has them."""
    if "avx512_vnni" in isa:
        return "avx512_vnni"
    return "avx512" if "avx512f" in isa else "avx2"


def optimum_quantized(fp32: Path, preset: str) -> Path:
    """`optimum-cli onnxruntime quantize --<preset> --per_channel`: per-channel scales, its most faithful."""
    exe = Path(sys.executable).with_name("optimum-cli")

    def build(tmp: Path) -> None:
        _run(
            [
                str(exe),
                "onnxruntime",
                "quantize",
                "--onnx_model",
                str(fp32),
                f"--{preset}",
                "--per_channel",
                "-o",
                str(tmp),
            ],
            cache_root() / "optimum.log",
        )

    return cached(f"{fp32.name}-{preset}-per-channel", build, marker="*quantized.onnx")


def model_file(folder: Path) -> Path:
    for name in ("model.onnx", "model_quantized.onnx"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"no .onnx file in {folder}")
    return found[0]

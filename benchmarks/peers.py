"""What edge users pick instead: llama.cpp (GGUF) and OpenVINO, each in its own venv, built once and cached.

The peers never enter edgekit's own dependencies. Their venvs live under the bench cache
(~/.cache/edgekit/bench, `EDGEKIT_BENCH_CACHE` overrides), named by the versions they pin, so a version bump
builds a fresh one beside the old and a rerun reuses what is there:

- `venv-llama-<v>`: llama-cpp-python built from its sdist (CMake; ~20 min at one job the first time). Its
  `convert_hf_to_gguf.py` (vendored llama.cpp, taken from the same sdist) needs torch + transformers; the venv
  layers over the main venv's site-packages (a .pth file, after its own) for those instead of a second copy.
- `venv-ov-<v>`: optimum-intel + OpenVINO + NNCF. optimum-intel 2.2 resolves to transformers 5.x; its metadata
  accepts torch 2.13, so the CPU torch wheel is installed first and pinned (a plain install pulls the CUDA
  build of torch 2.14). The torchvision it drags in is built for another torch and breaks `import
  optimum.intel`; a text model never needs it, so it is removed.

Every GGUF comes from one f32 GGUF converted from the same fp32 HF folder the other rows use, then
`llama_cpp.llama_model_quantize`; OpenVINO models come from `optimum-cli export openvino` on that folder.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from prepare import _run, cache_root, cached

LLAMA_VERSION = "0.3.36"
OPTIMUM_INTEL_VERSION = "2.2.0"
OPENVINO_VERSION = "2026.4.1"
NNCF_VERSION = "3.4.0"
TORCH_CPU = "torch==2.13.0"
# llama_ftype values from llama.h (LLAMA_FTYPE_MOSTLY_*).
GGUF_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q4_K_M": 15}
# int4 group 64: optimum-intel refuses 128 for SmolLM2's 576-wide layers.
OV_FORMATS = {
    "fp32": ["--weight-format", "fp32"],
    "int8": ["--weight-format", "int8"],
    "int4": ["--weight-format", "int4", "--group-size", "64"],
}


def llama_venv() -> Path:
    return cache_root() / f"venv-llama-{LLAMA_VERSION}"


def ov_venv() -> Path:
    return cache_root() / f"venv-ov-{OPTIMUM_INTEL_VERSION}-{OPENVINO_VERSION}"


def _works(py: Path, code: str) -> bool:
    try:
        subprocess.run([str(py), "-c", code], check=True, capture_output=True, timeout=300)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _layer_main_site(venv: Path) -> None:
    """Let `venv` fall back on the main venv's packages (its own come first)."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    main_site = next((Path(sys.prefix) / "lib").glob("python3*/site-packages"))
    (site / "zz_main_venv.pth").write_text(str(main_site) + "\n")


def llama_python() -> Path:
    venv = llama_venv()
    py = venv / "bin" / "python"
    if _works(py, f"import llama_cpp, sentencepiece; assert llama_cpp.__version__ == '{LLAMA_VERSION}'"):
        _layer_main_site(venv)
        return py
    log = cache_root() / "llama-install.log"
    print(
        f"  building llama-cpp-python {LLAMA_VERSION} from source (~20 min at one job), log {log}", flush=True
    )
    _run([sys.executable, "-m", "venv", str(venv)], log)
    # One compile job: the host is small and shared; do not add -DLLAMA_BUILD_TOOLS=ON, it breaks the build.
    _run(
        [
            "env",
            "CMAKE_BUILD_PARALLEL_LEVEL=1",
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            f"llama-cpp-python=={LLAMA_VERSION}",
            "numpy",
            "sentencepiece",
            "gguf",
        ],
        log,
    )
    _layer_main_site(venv)
    return py


def ov_python() -> Path:
    venv = ov_venv()
    py = venv / "bin" / "python"
    if _works(py, "from optimum.intel import OVModelForCausalLM; import openvino, nncf"):
        return py
    log = cache_root() / "ov-install.log"
    print(f"  installing optimum-intel {OPTIMUM_INTEL_VERSION} + OpenVINO into {venv}, log {log}", flush=True)
    _run([sys.executable, "-m", "venv", str(venv)], log)
    pip = str(venv / "bin" / "pip")
    _run([pip, "install", "-q", TORCH_CPU], log)
    pins = venv / "pins.txt"
    pins.write_text(f"{TORCH_CPU}\nopenvino=={OPENVINO_VERSION}\nnncf=={NNCF_VERSION}\n")
    _run(
        [pip, "install", "-q", "-c", str(pins), f"optimum-intel[openvino,nncf]=={OPTIMUM_INTEL_VERSION}"], log
    )
    _run([pip, "uninstall", "-y", "-q", "torchvision"], log)
    return py


def llama_tools() -> Path:
    """vendor/llama.cpp's converter (+ gguf-py, conversion/) from the sdist llama-cpp-python was built from."""
    py = llama_python()

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        log = cache_root() / "llama-install.log"
        _run(
            [
                str(py),
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_VERSION}",
                "-d",
                str(tmp),
            ],
            log,
        )
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and m.name[len(prefix) :].startswith(keep)
                and (m.isfile() or m.isdir())
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(tmp, members=members, filter="data")
        sdist.unlink()

    return cached(f"llama.cpp-tools-{LLAMA_VERSION}", build, marker="convert_hf_to_gguf.py")


def gguf_f32(hf: Path) -> Path:
    tools = llama_tools()
    py = llama_python()

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        _run(
            [
                str(py),
                str(tools / "convert_hf_to_gguf.py"),
                str(hf),
                "--outtype",
                "f32",
                "--outfile",
                str(tmp / "model.gguf"),
            ],
            cache_root() / "llama-convert.log",
        )

    return cached(f"smollm2-gguf-f32-{LLAMA_VERSION}", build, marker="model.gguf") / "model.gguf"


def gguf_quantized(hf: Path, qtype: str) -> Path:
    if qtype == "f32":
        return gguf_f32(hf)
    src = gguf_f32(hf)
    py = llama_python()

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        code = (
            "import sys, ctypes, llama_cpp as L\n"
            "p = L.llama_model_quantize_default_params()\n"
            f"p.ftype = {GGUF_TYPES[qtype]}\n"
            "rc = L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))\n"
            "sys.exit(rc)\n"
        )
        _run([str(py), "-c", code, str(src), str(tmp / "model.gguf")], cache_root() / "llama-quantize.log")

    return cached(f"smollm2-gguf-{qtype}-{LLAMA_VERSION}", build, marker="model.gguf") / "model.gguf"


def openvino_model(hf: Path, fmt: str) -> Path:
    py = ov_python()
    cli = py.with_name("optimum-cli")

    def build(tmp: Path) -> None:
        _run(
            [
                str(cli),
                "export",
                "openvino",
                "-m",
                str(hf),
                "--task",
                "text-generation-with-past",
                *OV_FORMATS[fmt],
                str(tmp),
            ],
            cache_root() / "ov-export.log",
        )

    return (
        cached(
            f"smollm2-ov-{fmt}-{OPTIMUM_INTEL_VERSION}-{OPENVINO_VERSION}", build, marker="openvino_model.xml"
        )
        / "openvino_model.xml"
    )


def peer_versions() -> dict[str, str | None]:
    """The versions each peer venv really holds (None: not built)."""
    out: dict[str, str | None] = {}
    probes = {
        "llama-cpp-python": (llama_venv(), "import llama_cpp; print(llama_cpp.__version__)"),
        "openvino": (ov_venv(), "import openvino; print(openvino.__version__.split('-')[0])"),
        "optimum-intel": (ov_venv(), "import importlib.metadata as m; print(m.version('optimum-intel'))"),
        "nncf": (ov_venv(), "import nncf; print(nncf.__version__)"),
        "transformers (OpenVINO venv)": (ov_venv(), "import transformers; print(transformers.__version__)"),
    }
    for name, (venv, code) in probes.items():
        py = venv / "bin" / "python"
        res = (
            subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=False)
            if py.is_file()
            else None
        )
        out[name] = res.stdout.strip() or None if res else None
    return out


def disk_mb(model: Path) -> float:
    """Size on disk of what a deployment ships: the model file, plus its folder's weights for ONNX/OpenVINO."""
    if model.suffix == ".gguf":
        return model.stat().st_size / 2**20
    exts = (".onnx", ".data", ".onnx_data", ".bin", ".xml", ".safetensors")
    return (
        sum(p.stat().st_size for p in model.parent.iterdir() if p.is_file() and p.name.endswith(exts)) / 2**20
    )

"""The prepared arm64 root: a Debian userland (python3 + numpy) made by mmdebstrap, plus aarch64 wheels.

Layout under `$EDGEKIT_CACHE/arm64-root` (override with `$EDGEKIT_ARM64_ROOT`):

    rootfs/      `mmdebstrap --variant=extract --arch=arm64` of python3, python3-numpy, libstdc++6, libgomp1
    site/        onnxruntime and tokenizers aarch64 wheels, unzipped (PYTHONPATH inside the emulator)
    root.json    what was installed (versions, wheel names); written last, so its presence marks the root complete

Everything comes from Debian's archive and the Python package index through their own clients (mmdebstrap, pip).
Checked recipe (field-notes.md, "ARM kernels under emulation"): qemu-user >= 10 (bookworm's 7.2 segfaults
importing onnxruntime 1.32), and libblas/liblapack linked by hand because extract runs no maintainer scripts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, UnsupportedError

log = logging.getLogger(__name__)

SUITE = "bookworm"  # its python3 is 3.11, what the wheels are downloaded for
PACKAGES = ("python3", "python3-numpy", "libstdc++6", "libgomp1")
QEMU_MIN_MAJOR = 10
# Debian bookworm's glibc is 2.36; pip takes exactly the platform tags it is given, so name each accepted one.
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
ELF_MACHINE_AARCH64 = 183
QEMU_HINT = "install qemu-user >= 10 (Debian: apt-get install -t bookworm-backports qemu-user), or run `make emulator`"


def root_dir() -> Path:
    from edgekit.util import cache_dir

    override = os.environ.get("EDGEKIT_ARM64_ROOT")
    return Path(override).expanduser() if override else cache_dir() / "arm64-root"


@dataclass(frozen=True)
class EmulatorRoot:
    path: Path
    qemu: Path
    info: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def site(self) -> Path:
        return self.path / "site"

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / "python3"


def find_qemu() -> Path:
    """qemu-aarch64 (>= 10) on PATH, or InputError naming what to install."""
    for name in ("qemu-aarch64", "qemu-aarch64-static"):
        found = shutil.which(name)
        if found:
            text = subprocess.run([found, "--version"], capture_output=True, text=True, check=False).stdout
            match = re.search(r"version (\d+)\.", text)
            if match and int(match.group(1)) < QEMU_MIN_MAJOR:
                raise InputError(f"{found} is qemu {match.group(1)}; onnxruntime needs qemu-user >= {QEMU_MIN_MAJOR}",
                                 hint=QEMU_HINT)
            return Path(found)
    raise InputError("no emulator: qemu-aarch64 is not on PATH", hint=QEMU_HINT)


def find_root(path: Path | None = None) -> EmulatorRoot:
    """The prepared root (emulator included), or InputError saying how to prepare it."""
    path = Path(path) if path else root_dir()
    stamp = path / "root.json"
    if not stamp.is_file():
        raise InputError(f"no prepared arm64 root at {path}", hint="run `make emulator` (or `python -m edgekit.device prepare`)")
    qemu = find_qemu()
    info = json.loads(stamp.read_text())
    root = EmulatorRoot(path, qemu, info)
    check_wheel_platform(root.site)
    return root


def elf_machine(path: Path) -> int:
    with path.open("rb") as fh:
        head = fh.read(20)
    if head[:4] != b"\x7fELF":
        raise InputError(f"{path} is not an ELF shared library")
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def check_wheel_platform(site: Path) -> None:
    """Every compiled extension on the emulator's PYTHONPATH must be aarch64 code."""
    libs = [p for p in site.rglob("*.so*") if p.is_file()] if site.is_dir() else []
    if not libs:
        raise InputError(f"{site}: no compiled onnxruntime/tokenizers found", hint="run `make emulator` again")
    for lib in libs:
        if elf_machine(lib) != ELF_MACHINE_AARCH64:
            raise InputError(f"{lib.name} in {site} is not aarch64 code (ELF machine {elf_machine(lib)}): a wheel for "
                             "the wrong platform", hint="give manylinux aarch64 wheels, or run `make emulator` again")


def _wheel_tag_ok(name: str) -> bool:
    # name-version(-build)?-python-abi-platform.whl; the platform may be a dotted list of tags
    platform = name[:-4].split("-")[-1] if name.endswith(".whl") else ""
    return bool(platform) and all(tag.endswith("aarch64") for tag in platform.split("."))


def host_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"onnxruntime": version("onnxruntime"), "tokenizers": version("tokenizers")}


def download_wheels(dest: Path, versions: dict[str, str], python_version: str) -> list[Path]:
    """pip download the aarch64 wheels of the versions this host built with (cached by pip)."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *platforms,
           "--python-version", python_version, "-d", str(dest),
           *(f"{name}=={ver}" for name, ver in versions.items())]
    log.info("downloading aarch64 wheels: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"pip could not download the aarch64 wheels: {done.stderr.strip().splitlines()[-1:]}")
    return sorted(dest.glob("*.whl"))


def install_wheels(wheels: list[Path], site: Path) -> list[str]:
    """Unzip wheels onto `site`; refuse any wheel that is not for aarch64 (one line, exit 2)."""
    for wheel in wheels:
        if not wheel.is_file() or not _wheel_tag_ok(wheel.name):
            raise InputError(f"{wheel.name}: not a wheel for linux aarch64", hint="give a manylinux ..._aarch64 wheel")
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    check_wheel_platform(site)
    return [w.name for w in wheels]


def make_rootfs(rootfs: Path) -> None:
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise InputError("mmdebstrap is not on PATH", hint="apt-get install mmdebstrap, or run `make emulator` as root")
    cmd = [tool, "--arch=arm64", "--variant=extract", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs)]
    mirror = os.environ.get("EDGEKIT_DEBIAN_MIRROR")
    if mirror:
        cmd.append(mirror)
    log.info("making the arm64 root: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"mmdebstrap failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    libdir = rootfs / "usr" / "lib" / "aarch64-linux-gnu"
    for lib, sub in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        link = libdir / lib
        if not link.exists() and (libdir / sub / lib).exists():
            link.symlink_to(Path(sub) / lib)  # the alternatives link extract does not make


def _python_version(rootfs: Path) -> str:
    found = sorted(p.name for p in (rootfs / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    if not found:
        raise InputError(f"{rootfs}: no python3 in the arm64 root; delete it and prepare again")
    return found[-1].removeprefix("python")


def prepare(path: Path | None = None, *, wheels: list[Path] | None = None, force: bool = False) -> EmulatorRoot:
    """Make the root once (cached): Debian arm64 userland + aarch64 onnxruntime/tokenizers wheels."""
    path = Path(path) if path else root_dir()
    if (path / "root.json").is_file() and not force:
        return find_root(path)
    for wheel in wheels or []:  # a wrong wheel is one line at once, not after the root is made
        if not wheel.is_file() or not _wheel_tag_ok(wheel.name):
            raise InputError(f"{wheel.name}: not a wheel for linux aarch64", hint="give a manylinux ..._aarch64 wheel")
    qemu = find_qemu()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make_rootfs(tmp / "rootfs")
    python_version = _python_version(tmp / "rootfs")
    versions = host_versions()
    files = wheels or download_wheels(root_dir().parent / "wheels-aarch64", versions, python_version)
    names = install_wheels(list(files), tmp / "site")
    info = {"schema": "edgekit/arm64-root@1", "suite": SUITE, "packages": list(PACKAGES), "python": python_version,
            "wheels": names, "host_versions": versions}
    (tmp / "root.json").write_text(json.dumps(info, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return EmulatorRoot(path, qemu, info)  # `python -m edgekit.device prepare` then smoke-tests it


def smoke(root: EmulatorRoot, cpu: str = "cortex-a76") -> str:
    """Import onnxruntime and tokenizers under the emulator; returns onnxruntime's version there."""
    code = "import onnxruntime, tokenizers, numpy, platform; print(platform.machine(), onnxruntime.__version__)"
    done = subprocess.run(qemu_command(root, cpu, ["-c", code]), env=qemu_env(root), capture_output=True, text=True,
                          check=False, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise UnsupportedError(f"onnxruntime does not import under {root.qemu.name} -cpu {cpu}: {tail}")
    return done.stdout.strip()


def qemu_command(root: EmulatorRoot, cpu: str, args: list[str]) -> list[str]:
    return [str(root.qemu), "-cpu", cpu, "-L", str(root.rootfs), str(root.python), *args]


def qemu_env(root: EmulatorRoot, extra_paths: tuple[Path, ...] = ()) -> dict[str, str]:
    paths = [str(root.site), *(str(p) for p in extra_paths)]
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(paths), "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}

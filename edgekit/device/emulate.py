"""The emulated target-ISA check: the same on-device bench (edgekit.runtime.ondevice) on this host's kernels and on the
aarch64 kernels under qemu-user with the profile's CPU model, compared position by position.

Records fidelity on the ARM kernels vs the source reference, and the ISA agreement with the host run (argmax
agreement over every reference position, greedy-token match over N prompts). Speed under emulation is the
emulator's, not the device's: it is never recorded.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import edgekit
from edgekit import progress
from edgekit.device.root import EmulatorRoot, find_root, qemu_command, qemu_env
from edgekit.errors import InputError, UnsupportedError

log = logging.getLogger(__name__)

DEFAULT_CPU = "cortex-a76"
DEFAULT_TIMEOUT_S = 3600.0


def _qemu_version(root: EmulatorRoot) -> str:
    text = subprocess.run([str(root.qemu), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version ([\d.]+)", text)
    return match.group(1) if match else "?"


def _bench_args(folder: Path, reference: Path | None, out: Path, windows: int | None, prompts: int,
                greedy_tokens: int) -> list[str]:
    args = ["-m", "edgekit.runtime.ondevice", str(Path(folder).resolve()), "--out", str(out), "--prompts", str(prompts),
            "--greedy-tokens", str(greedy_tokens)]
    if reference is not None:
        args += ["--reference", str(Path(reference).resolve())]
    if windows is not None:
        args += ["--windows", str(windows)]
    return args


def run_emulated(root: EmulatorRoot, cpu: str, args: list[str], timeout_s: float) -> None:
    """Run `python3 ARGS` in the arm64 root under qemu; the edgekit package on the path is this one."""
    package_parent = Path(edgekit.__file__).resolve().parent.parent
    cmd = qemu_command(root, cpu, args)
    log.info("emulated run: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, env=qemu_env(root, (package_parent,)), capture_output=True, text=True,
                              check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise UnsupportedError(f"the emulated run took over {timeout_s:.0f} s", hint="fewer --windows") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        if lines[-1].startswith("error: "):  # the runner's own one-line error (bad input)
            raise InputError(lines[-1].removeprefix("error: "))
        raise UnsupportedError(f"the emulated run failed under {root.qemu.name} -cpu {cpu}: {lines[-1][:300]}")


def agreement(host: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """Argmax agreement over every reference position and greedy-token match over the prompts."""
    a, b = host["argmax"], arm["argmax"]
    n = min(len(a), len(b))
    same = sum(int(x == y) for x, y in zip(a[:n], b[:n], strict=True))
    seqs = list(zip(host["greedy"]["tokens"], arm["greedy"]["tokens"], strict=True))
    matched = sum(sum(int(x == y) for x, y in zip(s, t, strict=False)) for s, t in seqs)
    total = sum(max(len(s), len(t)) for s, t in seqs)
    first = [next((i for i, (x, y) in enumerate(zip(s, t, strict=False)) if x != y), None) for s, t in seqs]
    return {"argmax_agreement": round(same / n, 6) if n else None, "positions": n,
            "greedy": {"prompts": len(seqs), "new_tokens": host["greedy"]["new_tokens"],
                       "identical_sequences": sum(int(s == t) for s, t in seqs),
                       "token_match": round(matched / total, 6) if total else None,
                       "first_divergence": first}}


def emulated_check(folder: Path, *, cpu: str | None = None, reference: Path | None = None, windows: int | None = None,
                   prompts: int = 3, greedy_tokens: int = 16, root: EmulatorRoot | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The target-ISA block for report.json (see the module docstring)."""
    from edgekit.runtime.ondevice import load_reference
    from edgekit.runtime.ondevice import run as bench_run

    folder = Path(folder)
    load_reference(folder, reference)  # no reference → one line, before minutes of emulation
    root = root or find_root()
    cpu = cpu or DEFAULT_CPU
    with progress.stage("target ISA: host kernels"):
        host = bench_run(folder, reference=reference, windows=windows, prompts=prompts, greedy_tokens=greedy_tokens)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-emulate-") as scratch, \
            progress.stage(f"target ISA: aarch64 {cpu} under qemu-user (minutes)"):
        out = Path(scratch) / "arm.json"
        run_emulated(root, cpu, _bench_args(folder, reference, out, windows, prompts, greedy_tokens), timeout_s)
        arm = json.loads(out.read_text())
    seconds = time.perf_counter() - t0
    m = arm["machine"]
    measured_on = f"{m['machine']} {cpu}, qemu-user {_qemu_version(root)}, onnxruntime {m['onnxruntime']} (aarch64 kernels)"
    hm = host["machine"]
    host_on = f"{hm['machine']} {platform.processor() or hm['cpu']}, onnxruntime {hm['onnxruntime']} (host kernels)"
    return {
        "measured_on": measured_on,
        "cpu_model": cpu,
        "fidelity": {**arm["fidelity"], "measured_on": measured_on},
        "host": {"measured_on": host_on, "fidelity": host["fidelity"]},
        "isa_agreement": {"vs": host_on, **agreement(host, arm)},
        "reference": arm["reference"],
        "speed": "not recorded: emulated speed is not a device figure",
        "emulation_seconds": round(seconds, 1),
    }


def apply_target_isa(report: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """The report gated on the device's kernels: `fidelity` becomes the ARM figures (with `measured_on`), the
    host's move to `fidelity_host`, and `target_isa` keeps the rest of the block."""
    out = dict(report)
    host = dict(report.get("fidelity") or {})
    host.setdefault("measured_on", block["host"]["measured_on"].replace(" (host kernels)", " (host kernels, vs full source logits)"))
    out["fidelity_host"] = host
    out["fidelity"] = block["fidelity"]
    out["target_isa"] = {k: v for k, v in block.items() if k != "fidelity"}
    return out


def build_check(report: dict[str, Any], folder: Path, reference: Path, profile: Any) -> None:
    """In `build` for an arm64 profile: run the check when the emulator is prepared, else say clearly that the
    fidelity is the build host's kernels' (a warning in the report and the log). `EDGEKIT_EMULATE=0` skips it."""
    import os

    reason = None
    if os.environ.get("EDGEKIT_EMULATE", "1") == "0":
        reason = "EDGEKIT_EMULATE=0"
    else:
        try:
            root = find_root()
        except InputError as exc:
            reason = exc.one_line()
    if reason is not None:
        msg = (f"fidelity was measured on this host's kernels only, not on {profile.name}'s aarch64 kernels "
               f"(emulated check skipped: {reason})")
        log.warning(msg)
        report.setdefault("warnings", []).append(msg)
        report["target_isa"] = {"skipped": reason}
        return
    block = emulated_check(folder, cpu=profile.cpu_model or DEFAULT_CPU, reference=reference, root=root)
    report.update(apply_target_isa(report, block))

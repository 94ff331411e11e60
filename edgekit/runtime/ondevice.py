"""The on-device bench: a bundle's fidelity vs the reference it carries, and its speed, with onnxruntime, numpy
and tokenizers only — no torch, no source weights. Runs on the device's own Python (3.9+), and under qemu-user
for the emulated target-ISA check (`python -m edgekit.runtime.ondevice FOLDER --out result.json`).

The generation loop is `edgekit.runtime`'s (the one `edgekit run` ships); the fidelity summary is bench's
(`summarize_causal`), fed per-position statistics computed against `reference.npz` instead of the source.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.bundle import reference as refmod
from edgekit.errors import InputError
from edgekit.util import peak_rss_mb, write_atomic

if TYPE_CHECKING:
    from edgekit.runtime import Decoder

log = logging.getLogger(__name__)

SCHEMA = "edgekit/ondevice@1"
GREEDY_PROMPT_TOKENS = 32


def load_reference(folder: Path, path: Path | None = None) -> refmod.Reference:
    """The bundle's reference data, or InputError (exit 2) saying how to get one."""
    path = Path(path) if path else Path(folder) / refmod.FILE
    if not path.is_file():
        raise InputError(f"{folder}: no reference data ({refmod.FILE}); rebuild the bundle with `edgekit build` "
                         "(text-generation bundles carry the source's next-token reference)")
    try:
        return refmod.load(path)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def reference_fidelity(decoder: Decoder, ref: refmod.Reference, *, max_windows: int | None = None) -> tuple[dict[str, Any], list[int]]:
    """Fidelity vs the shipped reference (bench's metric names and CIs) and the variant's argmax per position."""
    from edgekit.bench.fidelity import CausalStats, summarize_causal

    parts, argmax = [], []
    for window, rows in list(zip(ref.windows, ref.window_slices()))[:max_windows]:  # noqa: B905 (Python 3.9)
        logits = decoder.logits(window)[:-1]
        st = refmod.variant_stats(ref.rows(rows), logits, np.asarray(window[1:]))
        parts.append(CausalStats(st["kld"], st["nll_source"], st["nll_variant"], st["top1"]))
        argmax += st["argmax"].tolist()
    summary = summarize_causal(CausalStats.concat(parts))
    for name in ("kld_mean", "kld_p99", "kld_max"):
        summary[name]["method"] = f"top-{ref.meta['top_k']} exact + {ref.meta.get('tail_samples', 0)} sampled tail tokens"
    return summary, argmax


def greedy_prompts(ref: refmod.Reference, count: int) -> list[list[int]]:
    """`count` prompts of 32 eval tokens, spread over the reference windows."""
    ids = ref.arrays["ids"].tolist()
    step = max(GREEDY_PROMPT_TOKENS, len(ids) // max(1, count))
    return [ids[i * step:i * step + GREEDY_PROMPT_TOKENS] for i in range(count) if i * step + 2 <= len(ids)]


def greedy(decoder: Decoder, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    return [decoder.generate(p, new_tokens).tokens for p in prompts]


def speed(decoder: Decoder, prompt: list[int], new_tokens: int, runs: int) -> dict[str, Any]:
    """TTFT and decode rate over `runs` generations of the profile's workload (measured, never estimated)."""
    from edgekit.bench.latency import generation_metrics

    ttft, steps = [], []
    decoder.generate(prompt, 2)  # warm-up: first-run allocations are not the steady state
    for _ in range(runs):
        result = decoder.generate(prompt, new_tokens)
        ttft.append(result.ttft_s)
        steps.append(result.step_s)
    metrics = generation_metrics(len(prompt), ttft, steps)
    for m in metrics.values():
        m["estimated"] = False
    return metrics


def machine() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu part", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "cpu": cpu, "cores": os.cpu_count()}


def run(folder: Path, *, reference: Path | None = None, threads: int = 1, windows: int | None = None,
        prompts: int = 3, greedy_tokens: int = 16, workload: dict[str, int] | None = None, runs: int = 3) -> dict[str, Any]:
    """Fidelity vs the reference, greedy tokens on `prompts` eval prompts and (with `workload`) speed."""
    from edgekit.runtime import Decoder, Model

    folder = Path(folder)
    ref = load_reference(folder, reference)
    t0 = time.perf_counter()
    model = Model(folder, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    if model.task != "text-generation":
        raise InputError(f"{folder}: the on-device bench measures text-generation bundles (this one is {model.task})")
    decoder = Decoder(model.session)
    fidelity, argmax = reference_fidelity(decoder, ref, max_windows=windows)
    out: dict[str, Any] = {"schema": SCHEMA, "machine": machine(), "threads": threads, "fidelity": fidelity,
                           "argmax": argmax, "reference": {k: ref.meta.get(k) for k in ("top_k", "positions", "windows",
                                                                                          "tail_mass_mean", "eval")},
                           "greedy": {"new_tokens": greedy_tokens, "prompts": greedy_prompts(ref, prompts)}}
    out["greedy"]["tokens"] = greedy(decoder, out["greedy"]["prompts"], greedy_tokens)
    if workload:
        ids = ref.arrays["ids"].tolist()
        prompt = (ids * (workload["prompt_tokens"] // len(ids) + 1))[: workload["prompt_tokens"]]
        metrics = speed(decoder, prompt, int(workload["new_tokens"]), runs)
        metrics["load_ms"] = {"value": round(load_ms, 3), "unit": "ms", "n": 1, "estimated": False}
        metrics["peak_rss_mb"] = {"value": round(peak_rss_mb(), 3), "unit": "MB", "n": 1, "estimated": False}
        out["performance"] = metrics
    return out


def device_report(folder: Path, *, profile: dict[str, Any] | None = None, threads: int | None = None,
                  runs: int = 5) -> dict[str, Any]:
    """`edgekit bench BUNDLE --on-device`: a report@1 that `gate` gates with measured figures (no estimates).

    `profile` is {name, target, device, workload} (default: the one the bundle was built for)."""
    import datetime as dt

    from edgekit import __version__
    from edgekit.bundle import check_files, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    load_reference(folder)  # no reference data → one line, exit 2, before any measurement
    prof = dict(profile or manifest.get("profile") or {})
    workload = dict(prof.get("workload") or {})
    wanted = int(threads or workload.get("threads") or 1)
    use = min(wanted, os.cpu_count() or 1)
    warnings = [] if use == wanted else [f"profile asks for {wanted} threads; this machine has {use} cores"]
    result = run(folder, threads=use, prompts=0, workload={"prompt_tokens": int(workload.get("prompt_tokens", 64)),
                                                            "new_tokens": int(workload.get("new_tokens", 32))}, runs=runs)
    perf = result["performance"]
    size_mb = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx")) / 1e6
    perf["model_size_mb"] = {"value": round(size_mb, 3), "unit": "MB", "n": 1, "estimated": False}
    m = result["machine"]
    measured_on = f"{m['machine']} {m['cpu'] or '?'}, onnxruntime {m['onnxruntime']} (this device, --on-device)"
    return {
        "schema": "edgekit/report@1", "edgekit_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (Python 3.9)
        "host": {"cpu_model": m["cpu"], "cores": m["cores"], "machine": m["machine"], "python": m["python"],
                 "onnxruntime_version": m["onnxruntime"], "isa_flags": [], "providers": ["CPUExecutionProvider"]},
        "source": {**(manifest.get("source") or {}), "task": manifest.get("task")},
        "variant": {"path": str(folder), "method": manifest.get("method"), "target": manifest.get("target"),
                    "task": manifest.get("task"), "size_mb": round(size_mb, 3), "provider": "CPUExecutionProvider"},
        "profile": {k: prof.get(k) for k in ("name", "target", "device", "workload")},
        "performance": {"variant": perf, "source": {}, "speedup": {}, "device": None, "roofline": None, "on_device": True,
                        "runs": {"variant": {"runs": runs, "threads": use}}},
        "fidelity": {**result["fidelity"], "measured_on": measured_on},
        "eval": {**(result["reference"].get("eval") or {}), "reference": {k: v for k, v in result["reference"].items()
                                                                            if k != "eval"}},
        "decode": _build_host_decode(folder),
        "gate": None, "warnings": warnings,
    }


def _build_host_decode(folder: Path) -> dict[str, Any] | None:
    """The build's decode-path block, labelled as such: the reference data holds no source continuations, so the
    device cannot re-measure it, and a gate rule on it must not read as measured here."""
    import json

    try:
        built = json.loads((folder / "report.json").read_text()).get("decode")
    except (OSError, ValueError):
        return None
    if not isinstance(built, dict):
        return None
    return {**built, "measured_on": "the build host (copied from the bundle's report.json; not re-measured on "
                                    "this device: the reference data has no source continuations)"}


def main(argv: list[str] | None = None) -> int:
    """Entry point under the emulator: results as JSON to --out; errors as one line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.runtime.ondevice")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--greedy-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    from edgekit.errors import EdgekitError

    try:
        result = run(args.folder, reference=args.reference, threads=args.threads, windows=args.windows,
                     prompts=args.prompts, greedy_tokens=args.greedy_tokens)
    except EdgekitError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    write_atomic(args.out, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

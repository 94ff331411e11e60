"""`edgekit verify BUNDLE --emulate`: the bundle on the aarch64 kernels under qemu-user, vs this host's run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgekit.cli.options import echo, note


def profile_cpu(manifest: dict[str, Any]) -> str | None:
    from edgekit.catalog import load_profile
    from edgekit.errors import EdgekitError

    name = (manifest.get("profile") or {}).get("name")
    try:
        return load_profile(str(name)).cpu_model if name else None
    except EdgekitError:
        return None  # a bundle built with a profile this installation does not ship


def emulate_bundle(bundle: Path, *, cpu: str | None, windows: int | None, prompts: int, greedy_tokens: int,
                   out: Path | None, quiet: bool) -> dict[str, Any]:
    from edgekit.bundle import read_manifest, safe_extract
    from edgekit.device.emulate import DEFAULT_CPU, apply_target_isa, emulated_check
    from edgekit.device.root import find_root
    from edgekit.errors import InputError
    from edgekit.runtime.ondevice import load_reference
    from edgekit.util import write_atomic

    with tempfile.TemporaryDirectory(prefix="edgekit-emulate-") as scratch:
        folder = safe_extract(bundle, Path(scratch)) if bundle.is_file() else bundle
        manifest = read_manifest(folder)
        if manifest.get("task") != "text-generation":
            raise InputError(f"{bundle}: --emulate checks text-generation bundles (this one is {manifest.get('task')})")
        cpu = cpu or profile_cpu(manifest) or DEFAULT_CPU
        load_reference(folder)  # bad input is one line before anything else is said
        root = find_root()
        if not quiet:
            note(f"running {folder.name} on aarch64 {cpu} kernels under qemu-user (minutes; emulated speed is not recorded)")
        block = emulated_check(folder, cpu=cpu, windows=windows, prompts=prompts, greedy_tokens=greedy_tokens, root=root)
        if out is not None:
            report = json.loads((folder / "report.json").read_text())
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, json.dumps(apply_target_isa(report, block), indent=2, default=str))
    if not quiet:
        show(block)
        if out is not None:
            note(f"wrote {out}")
    return block


def show(block: dict[str, Any]) -> None:
    fid, isa = block["fidelity"], block["isa_agreement"]
    echo(f"fidelity vs the source reference, measured on {block['measured_on']}:")
    for name in ("top1_agreement", "kld_mean", "ppl_ratio"):
        if name in fid:
            echo(f"  {name}: {fid[name]['value']:.4f} [{fid[name]['ci95_low']:.4f}, {fid[name]['ci95_high']:.4f}]"
                 f" (host kernels: {block['host']['fidelity'][name]['value']:.4f})")
    g = isa["greedy"]
    echo(f"ISA agreement vs {isa['vs']}: argmax {isa['argmax_agreement']:.4f} over {isa['positions']} positions; "
         f"greedy {g['identical_sequences']}/{g['prompts']} prompts identical, token match "
         f"{g['token_match'] if g['token_match'] is None else round(g['token_match'], 4)} ({g['new_tokens']} tokens each)")

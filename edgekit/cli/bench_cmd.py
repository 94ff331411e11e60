"""`edgekit bench MODEL --source SOURCE [--profile P] [--eval-data FILE] [-o report.json]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.bench.core import DEFAULT_EVAL_TOKENS
from edgekit.cli.inspect_cmd import allow_implausible_option
from edgekit.cli.options import common_options, echo, emit_json, note, table


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--source", "-s", "source_spec", default=None,
              help="The source model the variant came from (not with --on-device on a bundle: its reference data is used).")
@click.option("--profile", "-p", "profile_name", default="local", show_default=True,
              help="Profile name or YAML path (--on-device on a bundle: default the bundle's own).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Held-out text (one item a line; 'label<TAB>text' for classification accuracy).")
@click.option("--eval-tokens", type=click.IntRange(min=2), default=DEFAULT_EVAL_TOKENS, show_default=True,
              help="Tokens of eval text for fidelity (windows of <= 256 within documents).")
@click.option("--max-time", "max_time", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Time limit (s) of each engine's repeated timing runs.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="report.json path; report.md and report.png are written beside it.")
@click.option("--decode-prompts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Greedy continuations checked through the variant's KV cache (0: skip the decode-path check).")
@click.option("--on-device", is_flag=True, help="This run is on the profile's device: no estimates. On a bundle: "
              "torch-free, fidelity vs the bundle's reference data.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the source to run.")
@allow_implausible_option
@common_options
def bench(model: Path, source_spec: str | None, profile_name: str, eval_data: Path | None, eval_tokens: int,
          max_time: float, out: Path | None, decode_prompts: int, on_device: bool, trust_remote_code: bool,
          allow_implausible_source: bool, as_json: bool) -> None:
    """Measure MODEL (an edgekit export/compress folder) against SOURCE: speed, memory, fidelity with CIs."""
    from edgekit.artifact import OnnxArtifact
    from edgekit.bench import bench as run_bench
    from edgekit.bench import write_report
    from edgekit.catalog import load_profile
    from edgekit.errors import InputError

    if on_device and source_spec is None and (model / "edgekit.json").is_file():
        _bench_bundle_on_device(model, profile_name, out, as_json)
        return
    if source_spec is None:
        raise InputError("give --source (the model MODEL came from), or --on-device on a bundle")
    from edgekit.records import set_sanity
    from edgekit.source import load_source
    from edgekit.source.integrity import check_source

    profile = load_profile(profile_name)
    variant = OnnxArtifact.load(model)
    source = load_source(source_spec, task=variant.task, trust_remote_code=trust_remote_code)
    sanity = check_source(source, eval_data=eval_data, allow_implausible=allow_implausible_source)
    report = run_bench(variant, source, profile, eval_data=eval_data, on_device=on_device, eval_tokens=eval_tokens,
                       max_time_s=max_time, decode_prompts=decode_prompts)
    set_sanity(report, sanity)
    written = None
    if out is not None:
        folder, stem = (out.parent, out.stem) if out.suffix == ".json" else (out, "report")
        written = write_report(report, folder, stem=stem)
    if as_json:
        emit_json(report)
        return
    echo(summary_table(report))
    for warning in report.get("warnings", []):
        note(f"warning: {warning}")
    if written:
        note(f"wrote {written['json']}, {written['md'].name}, {written['png'].name}")


def summary_table(report: dict[str, Any]) -> str:
    perf, fid = report["performance"], report["fidelity"]
    device = perf.get("device") or {}
    rows = []
    for name, v in perf["variant"].items():
        s = perf["source"].get(name, {})
        d = device.get(name)
        rows.append((f"{name} ({v['unit']})", v["value"], v.get("p95"), s.get("value"), perf["speedup"].get(name),
                     _device_cell(d)))
    text = table(rows, ["performance", "variant", "p95", "source", "speedup", "device"])
    frows = [(name, m["value"], f"[{m['ci95_low']:.4f}, {m['ci95_high']:.4f}]", m["n"], m.get("n_windows"))
             for name, m in fid.items() if isinstance(m, dict)]
    dec = report.get("decode") or {}
    frows += [(f"decode.{name}", m["value"], f"[{m['ci95_low']:.4f}, {m['ci95_high']:.4f}]", m["n"], m.get("n_windows"))
              for name, m in (dec.get("metrics") or {}).items()]
    return text + "\n\n" + table(frows, ["fidelity", "value", "95% CI", "n", "windows"])


def _device_cell(entry: dict[str, Any] | None) -> str | None:
    if not entry:
        return None
    band = (entry.get("range") or {}).get("value")
    return f"{entry['value']:.4g} [{band[0]:.4g}, {band[1]:.4g}] est." if band else f"{entry['value']:.4g} est."


def _bench_bundle_on_device(bundle: Path, profile_name: str, out: Path | None, as_json: bool) -> None:
    """On the device: measured speed and RSS, fidelity vs the bundle's reference; no torch, no source."""
    import json

    from edgekit.runtime.ondevice import device_report
    from edgekit.util import write_atomic

    profile = None
    if profile_name != "local":  # default: the profile the bundle was built for
        from edgekit.catalog import load_profile

        p = load_profile(profile_name)
        profile = {"name": p.name, "target": p.target, "device": p.device.model_dump(), "workload": p.workload.model_dump()}
    report = device_report(bundle, profile=profile)
    if out is not None:
        path = out if out.suffix == ".json" else out / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report, indent=2))
    if as_json:
        emit_json(report)
        return
    perf, fid = report["performance"]["variant"], report["fidelity"]
    rows = [(f"{k} ({v['unit']})", v["value"], v.get("p95")) for k, v in perf.items()]
    echo(table(rows, ["measured on this device", "value", "p95"]))
    frows = [(k, v["value"], f"[{v['ci95_low']:.4f}, {v['ci95_high']:.4f}]", v["n"]) for k, v in fid.items()
             if isinstance(v, dict)]
    echo("\n" + table(frows, ["fidelity vs shipped reference", "value", "95% CI", "n"]))
    note(f"fidelity measured on: {fid['measured_on']}")
    if out is not None:
        note(f"wrote {path}")

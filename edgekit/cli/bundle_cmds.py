"""`edgekit verify BUNDLE` and `edgekit run BUNDLE [PROMPT]` — onnxruntime, numpy and tokenizers only."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from edgekit.cli.options import common_options, echo, emit_json, note


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--emulate", is_flag=True, help="Also run the bundle on the aarch64 kernels under qemu-user (`make emulator`) "
              "and compare with this host's run.")
@click.option("--cpu", default=None, help="qemu CPU model for --emulate (default: the profile's cpu_model).")
@click.option("--windows", type=click.IntRange(1), default=None, help="With --emulate: reference windows to run (default all).")
@click.option("--prompts", type=click.IntRange(0), default=3, show_default=True, help="With --emulate: greedy prompts.")
@click.option("--greedy-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="With --emulate: write the bundle's report.json with the target-ISA block here.")
@common_options
def verify(bundle: Path, emulate: bool, cpu: str | None, windows: int | None, prompts: int, greedy_tokens: int,
           out: Path | None, as_json: bool) -> None:
    """Recompute every hash, check the manifest and run one inference; exit 1 names what is wrong."""
    from edgekit.bundle import verify_bundle

    result = verify_bundle(bundle)
    if emulate:
        from edgekit.cli.emulate_cmd import emulate_bundle

        result["target_isa"] = emulate_bundle(bundle, cpu=cpu, windows=windows, prompts=prompts,
                                              greedy_tokens=greedy_tokens, out=out, quiet=as_json)
    if as_json:
        emit_json(result)
    else:
        echo(f"{bundle}: OK — {result['files']} files match the manifest, {result['inference']['task']} inference ran")
        echo(f"onnxruntime-genai: {result['genai']}")
        if result["gate_passed"] is False:
            echo(f"note: built as a failing variant for profile '{result['profile']}' "
                 f"({', '.join(result['gate_failed']) or 'see gate.json'})")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("prompt", required=False)
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 10), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Default: the bundle's runtime threads.")
@common_options
def run(bundle: Path, prompt: str | None, max_new_tokens: int, temperature: float, top_k: int, seed: int,
        threads: int | None, as_json: bool) -> None:
    """Run a bundle: stream generated text, or print labels / embedding vectors."""
    from edgekit.bundle import read_manifest, safe_extract
    from edgekit.errors import InputError
    from edgekit.runtime import Model

    with tempfile.TemporaryDirectory(prefix="edgekit-run-") as scratch:
        folder = safe_extract(bundle, Path(scratch)) if bundle.is_file() else bundle
        if not folder.is_dir():
            raise InputError(f"no such bundle: {bundle}")
        manifest = read_manifest(folder)
        if manifest.get("gate_passed") is False:
            note(f"warning: this bundle failed its gate ({', '.join(manifest.get('gate_failed') or []) or 'see gate.json'})")
        runtime = manifest.get("runtime") or {}
        model = Model(folder, threads=threads or int(runtime.get("threads", 1)), providers=runtime.get("providers"))
        text = prompt if prompt is not None else ("" if sys.stdin.isatty() else sys.stdin.read())
        if not text:
            raise InputError("give a PROMPT argument or text on stdin")
        if model.task == "text-generation":
            completion = _generate(model, text, max_new_tokens, temperature, top_k, seed, echo_pieces=not as_json)
            if as_json:
                emit_json({"prompt": text, "completion": completion})
            return
        _encode(model, text, as_json)


def _generate(model: Any, text: str, max_new_tokens: int, temperature: float, top_k: int, seed: int, *,
              echo_pieces: bool) -> str:
    """Greedy or sampled decoding with the KV cache, each piece printed as soon as its token exists."""
    from edgekit.errors import InputError

    if not model.encode(text):
        raise InputError("the prompt tokenizes to nothing; give some text")
    pieces: list[str] = []
    for piece in model.stream(text, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed):
        pieces.append(piece)
        if echo_pieces:
            click.echo(piece, nl=False)
            sys.stdout.flush()
    if echo_pieces:
        click.echo()
    return "".join(pieces)


def _encode(model: Any, text: str, as_json: bool) -> None:
    """One line of input = one item: labels for classification, L2-normalised vectors for embeddings."""
    import json

    lines = [ln for ln in text.splitlines() if ln.strip()] or [text]
    out = model.embed_or_classify(lines)
    if model.task == "text-classification":
        labels = model.labels(out)
        if as_json:
            emit_json([{"text": t, "label": lab, "logits": o.tolist()} for t, lab, o in zip(lines, labels, out, strict=True)])
        else:
            for t, lab in zip(lines, labels, strict=True):
                echo(f"{lab}\t{t}")
    elif as_json:
        emit_json([{"text": t, "embedding": o.tolist()} for t, o in zip(lines, out, strict=True)])
    else:
        for t, o in zip(lines, out, strict=True):
            echo(f"{json.dumps([round(float(x), 5) for x in o])}\t{t}")

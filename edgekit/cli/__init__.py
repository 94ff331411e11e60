"""The `edgekit` click app: thin typed commands, one module per command group, loaded lazily.

Error mapping lives here and only here: EdgekitError → one line and its exit code (2, or 1 for a failed
gate/verify), click usage errors → 2, anything else → 3. `EDGEKIT_DEBUG=1` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from typing import Any

import click

from edgekit import __version__

# command name → "module:attribute"; modules are imported only when their command runs (fast --help).
COMMANDS: dict[str, str] = {
    "build": "edgekit.cli.build_cmd:build",
    "export": "edgekit.cli.export_cmd:export",
    "compress": "edgekit.cli.compress_cmd:compress",
    "distill": "edgekit.cli.distill_cmd:distill",
    "bench": "edgekit.cli.bench_cmd:bench",
    "gate": "edgekit.cli.gate_cmd:gate",
    "verify": "edgekit.cli.bundle_cmds:verify",
    "run": "edgekit.cli.bundle_cmds:run",
    "fit": "edgekit.cli.fit_cmd:fit",
    "inspect": "edgekit.cli.inspect_cmd:inspect",
    "profiles": "edgekit.cli.catalog_cmds:profiles",
    "targets": "edgekit.cli.catalog_cmds:targets",
}
SHORT_HELP: dict[str, str] = {
    "build": "Source → export → compress → bench → gate → bundle, in one command.",
    "export": "Export a SOURCE to ONNX for a target, with a parity check.",
    "compress": "Quantize an exported model (int8/int4/fp16) for a target.",
    "distill": "Train a smaller student from SOURCE with knowledge distillation.",
    "bench": "Measure a variant against its source: speed, memory, fidelity with CIs.",
    "gate": "Check a report against a profile's budgets; exit 1 if it does not fit.",
    "verify": "Recompute a bundle's hashes and run one inference.",
    "run": "Run a bundle with onnxruntime only (no torch).",
    "fit": "Find the cheapest variant that passes a profile.",
    "inspect": "Check a SOURCE's integrity (tokenizer, round trip, own PPL) without building.",
    "profiles": "List or show device budget profiles.",
    "targets": "List or show compile targets.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _not_yet(cmd_name)
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SHORT_HELP.get(name, "")) for name in COMMANDS])


def _not_yet(name: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        from edgekit.errors import UnsupportedError

        raise UnsupportedError(f"'edgekit {name}' is not available in this version yet")

    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def app() -> None:
    """edgekit: fit a language model to an edge device budget, and prove it.

    SOURCE is an HF folder, a .gguf file, an ONNX model, `example:smollm2-135m` / `example:minilm-l6`,
    or a hub id (only when a hub is reachable).
    """


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "optimum", "torch", "onnxruntime", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbosity < 2 else logging.INFO)


def _ignore_late_interrupts() -> None:
    # Once the outcome is decided, a Ctrl-C that lands in interpreter shutdown (torch and onnxruntime tear down
    # for a while) must not turn exit 0 or 130 into death by SIGINT (-2), which CI reads as a crash.
    import signal

    with contextlib.suppress(ValueError):  # not the main thread (an embedding application)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: runs the app and maps errors to one line and an exit code."""
    from edgekit.errors import EdgekitError

    debug = os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers/optimum install their own log handlers at import; their verbosity comes from the environment.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        app.main(args=argv, prog_name="edgekit", standalone_mode=False)
        _ignore_late_interrupts()
    except EdgekitError as exc:
        if debug:
            raise
        click.echo(f"edgekit: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"edgekit: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        _ignore_late_interrupts()
        click.echo("edgekit: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        from edgekit.util import is_user_os_error

        if isinstance(exc, OSError) and is_user_os_error(exc):
            # A full disk, a read-only or forbidden path is the user's environment, not our bug: exit 2.
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"edgekit: error: {exc.strerror or exc}{where} (free space or choose another -o)", err=True)
            sys.exit(2)
        msg = " ".join(str(exc).split())[:300]
        click.echo(f"edgekit: internal error: {type(exc).__name__}: {msg} (set EDGEKIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(3)
    sys.exit(0)

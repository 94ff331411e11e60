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
from typing import TYPE_CHECKING, NoReturn

import click

from edgekit import __version__

if TYPE_CHECKING:
    from collections.abc import Callable
    from sys import UnraisableHookArgs
    from types import FrameType

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


class _Interrupt:
    """Whether a Ctrl-C arrived during this run, whatever became of the KeyboardInterrupt it raised."""

    received = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _Interrupt.received = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Install edgekit's Ctrl-C handler, which records the interrupt before raising KeyboardInterrupt.

    The record matters because a KeyboardInterrupt does not always reach `main` as itself: a C extension
    being imported turns it into `ImportError: initialization failed`, a finalizer swallows it.
    """
    import signal

    with contextlib.suppress(ValueError):  # not the main thread (an embedding application)
        signal.signal(signal.SIGINT, _on_sigint)


def _ignore_late_interrupts() -> None:
    # Once the outcome is decided, a Ctrl-C that lands in interpreter shutdown (torch and onnxruntime tear down
    # for a while) must not change the exit code.
    import signal

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit(code: int) -> NoReturn:
    _ignore_late_interrupts()
    if _Interrupt.received or code == 130:
        # Under `python -m`, a KeyboardInterrupt that ends a string exec (dataclasses and namedtuple build
        # classes that way, many times while torch and transformers import) sets CPython's "unhandled
        # KeyboardInterrupt" flag even when it is caught later, and the interpreter then kills itself with SIGINT
        # (exit -2), which CI reads as a crash. os._exit keeps the exit code we decided; every stage has
        # already cleaned up by now.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _drop_interrupt_noise(hook: Callable[[UnraisableHookArgs], object]) -> Callable[[UnraisableHookArgs], None]:
    def unraisable(info: UnraisableHookArgs) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            return  # "Exception ignored in ...: KeyboardInterrupt" from a finalizer: the interrupt is recorded
        hook(info)

    return unraisable


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: runs the app and maps errors to one line and an exit code."""
    catch_interrupts()
    sys.unraisablehook = _drop_interrupt_noise(sys.unraisablehook)
    debug = os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers/optimum install their own log handlers at import; their verbosity comes from the environment.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        code = _run(argv, debug)
    except (click.Abort, KeyboardInterrupt):
        code = 130
    if code == 130 or (code != 0 and _Interrupt.received):
        # An interrupt disguised as another error (see catch_interrupts) is still an interrupt.
        click.echo("edgekit: interrupted", err=True)
        code = 130
    _exit(code)


def _run(argv: list[str] | None, debug: bool) -> int:
    """The app's exit code; messages for errors are printed here, the interrupt message by `main`."""
    from edgekit.errors import EdgekitError

    try:
        app.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as exc:
        if debug:
            raise
        if not _Interrupt.received:
            click.echo(f"edgekit: error: {exc.one_line()}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"edgekit: error: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except (click.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        if _Interrupt.received:
            return 3
        return _internal_error(exc)
    return 0


def _internal_error(exc: Exception) -> int:
    from edgekit.util import is_user_os_error

    if isinstance(exc, OSError) and is_user_os_error(exc):
        # A full disk, a read-only or forbidden path is the user's environment, not our bug: exit 2.
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"edgekit: error: {exc.strerror or exc}{where} (free space or choose another -o)", err=True)
        return 2
    msg = " ".join(str(exc).split())[:300]
    click.echo(f"edgekit: internal error: {type(exc).__name__}: {msg} (set EDGEKIT_DEBUG=1 for the traceback)", err=True)
    return 3

"""The one exception hierarchy of edgekit.

The CLI maps every `EdgekitError` to a one-line message and exit code 2 (bad input, config or usage),
except `GateFailed` and `VerifyFailed`, which mean "the check ran and said no" (exit 1).
Anything else that escapes is a bug: exit 3.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class ConfigError(EdgekitError):
    """A profile, target or method spec is invalid (names the file, key and value)."""


class InputError(EdgekitError):
    """A SOURCE, data file or output path cannot be used as given."""


class UnsupportedError(EdgekitError):
    """A valid request that edgekit does not support (architecture, task, method on a target)."""


class ExportError(EdgekitError):
    """The ONNX exporter failed."""


class ParityError(ExportError):
    """The ONNX model disagrees with its PyTorch source beyond tolerance."""


class CompressError(EdgekitError):
    """A quantizer or distiller failed."""


class BenchError(EdgekitError):
    """A benchmark could not be run."""


class BundleError(EdgekitError):
    """A bundle could not be written or read."""


class VerifyFailed(EdgekitError):
    """A bundle failed verification: a changed, missing or extra file."""

    exit_code = 1


class GateFailed(EdgekitError):
    """The variant does not fit the profile: one or more gate rules failed."""

    exit_code = 1


class SourceCheckFailed(EdgekitError):
    """The source failed an integrity or sanity check (a broken tokenizer, an implausible PPL): nothing is built."""

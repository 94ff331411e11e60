from __future__ import annotations

import subprocess
import sys

from tests.conftest import run_cli


def test_import_edgekit_is_cheap() -> None:
    code = "import sys, edgekit, edgekit.cli, edgekit.specs, edgekit.catalog; " \
           "bad = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("build", "export", "compress", "bench", "gate", "verify", "run", "fit", "profiles", "targets"):
        assert cmd in res.stdout


def test_usage_error_is_exit_2_one_line() -> None:
    res = run_cli("profiles", "show")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    res = run_cli("no-such-command")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1

"""The shape issue 16 asked for, kept: small modules and functions, concrete types in signatures, the stage tree."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "edgekit"
STAGES = ("source", "export", "distill", "compress", "bench", "bundle", "runtime", "fit", "cli")


def _functions() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((path, node))
    return out


def _bare_any(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    a = fn.args
    annotations = [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None]
    return any(isinstance(t, ast.Name) and t.id == "Any" for t in (*annotations, fn.returns))


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_no_function_over_60_lines() -> None:
    long = [f"{p.relative_to(REPO)}:{f.lineno} {f.name}" for p, f in _functions() if f.end_lineno - f.lineno + 1 > 60]
    assert not long


def test_bare_any_in_under_a_tenth_of_signatures() -> None:
    functions = _functions()
    share = sum(_bare_any(f) for _, f in functions) / len(functions)
    assert share < 0.10, f"{share:.1%} of signatures take or return bare Any"


def test_one_package_per_stage() -> None:
    assert all((PACKAGE / stage / "__init__.py").is_file() for stage in STAGES)
    assert (PACKAGE / "gate.py").is_file() and (PACKAGE / "pipeline.py").is_file() and (PACKAGE / "records.py").is_file()
    # distillation runs on PyTorch models before export: it is not part of compress/ (ONNX quantization only)
    assert not list((PACKAGE / "compress").glob("*distill*")) and not (PACKAGE / "compress" / "student.py").exists()

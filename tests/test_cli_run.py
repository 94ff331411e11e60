from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundle.test_bundle import make_bundle

# Runs `edgekit run` in-process, then reports which heavy frameworks were imported along the way.
PROBE = """
import sys
from edgekit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("\\nMODULES", sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def bundles(tiny_onnx, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("run")
    out = {}
    for name in ("llama", "bert-emb", "bert-cls"):
        out[name] = make_bundle(tiny_onnx(name).path, root / name)
    return out


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, "run", *args], capture_output=True, text=True, timeout=120)


def test_run_generates_without_torch(bundles: dict[str, Path]) -> None:
    res = _run(str(bundles["llama"]), "The president said", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    assert "MODULES []" in res.stdout
    assert len(res.stdout.split("MODULES")[0].strip()) > 0


def test_run_greedy_is_deterministic_and_sampling_seeded(bundles: dict[str, Path]) -> None:
    a = _run(str(bundles["llama"]), "Hello", "--json")
    b = _run(str(bundles["llama"]), "Hello", "--json")
    assert json.loads(a.stdout.split("MODULES")[0]) == json.loads(b.stdout.split("MODULES")[0])
    s1 = _run(str(bundles["llama"]), "Hello", "--json", "--temperature", "1.0", "--top-k", "20", "--seed", "3")
    s2 = _run(str(bundles["llama"]), "Hello", "--json", "--temperature", "1.0", "--top-k", "20", "--seed", "3")
    assert s1.stdout == s2.stdout


def test_run_past_the_model_positions_exits_2(bundles: dict[str, Path]) -> None:
    res = _run(str(bundles["llama"]), "Hello", "--max-new-tokens", "4096")
    assert res.returncode == 2 and "positions" in res.stderr and "Traceback" not in res.stderr


def test_run_embeddings_and_labels(bundles: dict[str, Path]) -> None:
    res = _run(str(bundles["bert-emb"]), "a cat sat\nthe dog ran", "--json")
    assert res.returncode == 0, res.stderr
    assert "MODULES []" in res.stdout
    vecs = json.loads(res.stdout.split("MODULES")[0])
    assert len(vecs) == 2 and abs(sum(x * x for x in vecs[0]["embedding"]) - 1) < 1e-4
    res = _run(str(bundles["bert-cls"]), "what a film")
    assert res.returncode == 0 and res.stdout.split("\t")[0] in ("LABEL_0", "LABEL_1")


def test_run_bad_bundle(tmp_path: Path) -> None:
    res = _run(str(tmp_path / "nope"), "hi")
    assert res.returncode == 2 and "Traceback" not in res.stderr

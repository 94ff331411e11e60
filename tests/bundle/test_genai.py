"""Bundles load in onnxruntime-genai as they are, and generate the tokens `edgekit run` generates.

onnxruntime-genai 0.15.2 installs beside the pinned stack (it needs onnxruntime>=1.28 and numpy), so the dev extra
carries it and the tiny-model tests run in `make test`; the SmolLM2 ones are slow (`make test-all`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.bundle.genai import GENAI_FILE, GENAI_VERSION
from tests.bundle.test_genai_config import FAST, build
from tests.conftest import REPO, run_cli

try:
    import onnxruntime_genai as og
except ImportError as exc:  # a loud failure, not a skip: `make test` must prove GenAI loads the bundles
    raise ImportError(f"onnxruntime-genai is not installed; `make venv` installs the dev extra "
                      f"(onnxruntime-genai=={GENAI_VERSION})") from exc

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")
NEW_TOKENS = 32


def genai_greedy(model: og.Model, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """What an app does through GenAI's API: append the prompt, pick greedily until max_length or EOS."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    out: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def assert_same_tokens(bundle: Path, *, cli_prompts: int = 0) -> dict[str, list[int]]:
    """GenAI's tokenizer and greedy tokens equal edgekit's (the loop `edgekit run` drives) on every prompt; for
    the first `cli_prompts`, `edgekit run` itself prints the text of GenAI's tokens (real models only: a random
    model's tokens can end in half a UTF-8 character, which `run` holds back)."""
    from edgekit.runtime import Decoder, Model

    assert (bundle / GENAI_FILE).is_file()
    ours = Model(bundle)
    theirs = og.Model(str(bundle))
    tokenizer = og.Tokenizer(theirs)
    produced = {}
    for prompt in PROMPTS:
        ids = ours.encode(prompt)
        assert list(tokenizer.encode(prompt)) == ids, f"GenAI's tokenizer reads {prompt!r} differently"
        expected = list(Decoder(ours.session).tokens(ids, NEW_TOKENS, eos=ours.eos_ids))
        got = genai_greedy(theirs, ids, NEW_TOKENS)
        assert got == expected, f"{bundle.name}: {prompt!r}: GenAI {got} != edgekit {expected}"
        produced[prompt] = got
    for prompt in PROMPTS[:cli_prompts]:
        res = run_cli("run", str(bundle), prompt, "--max-new-tokens", str(NEW_TOKENS), "--json")
        assert res.returncode == 0, res.stderr
        text = ours.tokenizer.decode(produced[prompt], skip_special_tokens=True)
        assert json.loads(res.stdout)["completion"] == text
    return produced


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """tiny_bundle(arch, method) → a bundle built by `edgekit build` (once per module)."""
    root, built = tmp_path_factory.mktemp("genai-bundles"), {}

    def get(arch: str, method: str) -> Path:
        if (arch, method) not in built:
            built[arch, method] = build(tiny_model(arch), root / f"{arch}-{method}", method)
        return built[arch, method]

    return get


@pytest.mark.parametrize(("arch", "method"), [("llama", "int8-weight"), ("llama", "int4-rtn"), ("qwen2", "int8-weight"),
                                             pytest.param("phi3-swa", "int4-rtn", marks=pytest.mark.slow)])
def test_tiny_bundle_generates_the_same_tokens_in_genai(tiny_bundle, arch: str, method: str) -> None:  # type: ignore[no-untyped-def]
    assert og.__version__ == GENAI_VERSION
    bundle = tiny_bundle(arch, method)
    # phi3-swa: Phi-3's packed projections, a partial rotary and a window of 5 under 32 new tokens.
    # int8-weight builds rotate by default (online Hadamard nodes in the graph): GenAI must run them alike.
    rotation = json.loads((bundle / "edgekit.json").read_text())["settings"]["export"]["rotation"]
    assert rotation["mode"] == ("full" if method == "int8-weight" else "off")
    assert json.loads((bundle / "build.json").read_text())["settings"]["rotation"] == rotation
    produced = assert_same_tokens(bundle)
    # A random model may hit EOS (token 0) early; at least one prompt must run the whole 32-step decode loop.
    assert max(len(t) for t in produced.values()) == NEW_TOKENS


def test_readme_c_snippet_runs_a_bundle(tiny_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """README.md's C program, compiled against the wheel's libonnxruntime-genai, prints edgekit's tokens."""
    import onnxruntime

    from edgekit.runtime import Decoder, Model

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    section = (REPO / "README.md").read_text().split("## Run a bundle without Python", 1)[1]
    (tmp_path / "load.c").write_text(section.split("```c\n", 1)[1].split("```", 1)[0])
    lib = Path(og.__file__).parent
    exe = tmp_path / "load"
    subprocess.run([cc, "-o", str(exe), str(tmp_path / "load.c"), f"-I{Path(__file__).parent / 'genai'}", f"-L{lib}",
                    "-l:libonnxruntime-genai.so", f"-Wl,-rpath,{lib}"], check=True, capture_output=True)
    # GenAI dlopens libonnxruntime.so; the onnxruntime wheel ships it only as libonnxruntime.so.<version>.
    ort_lib = tmp_path / "ort"
    ort_lib.mkdir()
    (ort_lib / "libonnxruntime.so").symlink_to(next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*")))

    bundle, prompt = tiny_bundle("llama", "int8-weight"), PROMPTS[0]
    res = subprocess.run([str(exe), str(bundle), prompt], capture_output=True, timeout=300,
                         env={**os.environ, "LD_LIBRARY_PATH": str(ort_lib)})
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    ours = Model(bundle)
    ids = ours.encode(prompt)
    expected = list(Decoder(ours.session).tokens(ids, 64 - len(ids), eos=ours.eos_ids))  # the snippet's max_length
    stream = og.Tokenizer(og.Model(str(bundle))).create_stream()
    assert res.stdout == "".join(stream.decode(t) for t in expected).encode()


@pytest.fixture(scope="module")
def smollm2_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smollm2-genai")
    out = {}
    for method in ("int8-weight", "int4-rtn"):
        res = run_cli("build", "example:smollm2-135m", "--profile", "local", "--method", method, "-o",
                      str(root / method), *FAST, timeout=1800)
        # int4-rtn fails the local profile's fidelity gate on SmolLM2 (exit 1); the bundle is written all the same.
        assert res.returncode in (0, 1) and (root / method / "edgekit.json").is_file(), res.stderr
        out[method] = root / method
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8-weight", "int4-rtn"])
def test_smollm2_bundle_generates_the_same_tokens_in_genai(smollm2_bundles: dict[str, Path], method: str) -> None:
    from edgekit.runtime import Model

    produced = assert_same_tokens(smollm2_bundles[method], cli_prompts=len(PROMPTS))
    # Both stop at the same EOS (int8-weight ends "The capital of France is" after 30 tokens); otherwise 32.
    eos = Model(smollm2_bundles[method]).eos_ids
    assert all(len(t) == NEW_TOKENS or (t and t[-1] in eos) for t in produced.values())
    res = run_cli("verify", str(smollm2_bundles[method]))
    assert res.returncode == 0 and f"{GENAI_FILE} matches model.onnx" in res.stdout, res.stderr

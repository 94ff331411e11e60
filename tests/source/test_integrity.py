"""The source-integrity stage through the real CLI: GGUF fixtures with tiny random llama weights."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgekit.source import CONVERSION_VERSION, load_source
from tests.conftest import assert_exit_follows_gate, run_cli
from tests.source.gguf_fixtures import bpe_vocab, spm_vocab, write_gguf

STRICT = {"EDGEKIT_ALLOW_IMPLAUSIBLE_SOURCE": "0"}
FAST = ("--eval-tokens", "48", "--max-time", "0.5")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(folder))
    return folder


def _build(gguf: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`edgekit build GGUF` (fp32, short bench) with the source checks enforced."""
    return run_cli("build", str(gguf), "--profile", "local", "--method", "fp32", "-o", str(out), *FAST, *extra,
                   env={**STRICT, "EDGEKIT_CACHE": str(cache)})


def test_build_with_a_broken_tokenizer_exits_2_naming_the_check(cache: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "m.gguf", bpe_vocab())
    converted = load_source(str(gguf)).path
    # The converted tokenizer loses its merges (as a converter that ignores tokenizer.ggml.merges would).
    tok = json.loads((converted / "tokenizer.json").read_text())
    tok["model"]["merges"] = []
    (converted / "tokenizer.json").write_text(json.dumps(tok))
    res = _build(gguf, tmp_path / "bundle", cache)
    assert res.returncode == 2, res.stderr
    assert "source check 'tokenizer.probes' failed" in res.stderr and "Traceback" not in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("edgekit: ")]) == 1  # one error line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.gguf"]  # nothing bundled, no work left


def test_inspect_reports_every_figure_and_exits_2_on_a_random_model(cache: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "spm.gguf", spm_vocab())
    res = run_cli("inspect", str(gguf), "--json", env={"EDGEKIT_CACHE": str(cache)})
    assert res.returncode == 2 and "source check 'bits_per_byte' failed" in res.stderr
    sanity = json.loads(res.stdout)["sanity"]
    checks = {c["name"]: c["passed"] for c in sanity["checks"]}
    assert checks == {
        "tokenizer.vocab": True,
        "tokenizer.special_tokens": True,
        "tokenizer.probes": True,
        "round_trip": True,
        "bytes_per_token": True,
        "bits_per_byte": False,
    }
    figures = sanity["figures"]
    assert figures["bits_per_byte"] > figures["byte_entropy_baseline"] > 3 and figures["ppl"] > 100
    assert sanity["tokenizer"]["built_by"].startswith("edgekit.source.gguf_tokenizer@")


def test_override_records_and_builds(cache: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "spm.gguf", spm_vocab())
    out = tmp_path / "b"
    res = _build(gguf, out, cache, "--allow-implausible-source")
    assert_exit_follows_gate(res, out / "gate.json")
    sanity = json.loads((out / "report.json").read_text())["source"]["sanity"]
    assert sanity["override"] == "--allow-implausible-source" and sanity["failed"] == ["bits_per_byte"]
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["source_checks"]["override"] == "--allow-implausible-source"
    assert manifest["tokenizer"]["sha256"] == sanity["tokenizer"]["sha256"]
    # `edgekit run` prints only through the tokenizer the figures were computed with.
    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text() + "\n")
    run = run_cli("run", str(out), "hello", "--max-new-tokens", "2")
    assert run.returncode == 2 and "tokenizer.json is not the tokenizer" in run.stderr


def test_stale_conversion_is_rebuilt(cache: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "m.gguf", spm_vocab())
    folder = load_source(str(gguf)).path
    marker = folder / "edgekit-source.json"
    record = json.loads(marker.read_text())
    assert record["conversion_version"] == CONVERSION_VERSION
    (folder / "tokenizer.json").write_text("{}")  # what an older edgekit (transformers' tokenizer) left
    marker.write_text(json.dumps({**record, "conversion_version": CONVERSION_VERSION - 1}))
    again = load_source(str(gguf)).path
    assert again == folder and json.loads(marker.read_text())["conversion_version"] == CONVERSION_VERSION
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["type"] == "BPE"


@pytest.mark.slow
def test_smollm2_source_sanity() -> None:
    res = run_cli("inspect", "example:smollm2-135m", "--json", env=STRICT, timeout=1800)
    assert res.returncode == 0, res.stderr
    sanity = json.loads(res.stdout)["sanity"]
    assert sanity["passed"] and all(c["passed"] for c in sanity["checks"])
    figures = sanity["figures"]
    assert 3.5 < figures["bytes_per_token"] < 6 and figures["bits_per_byte"] < 1.5 and figures["ppl"] < 60


def test_unsupported_pre_tokenizer_converts_with_transformers_but_fails_the_check(
    cache: Path, tmp_path: Path
) -> None:
    from edgekit.errors import SourceCheckFailed
    from edgekit.source.integrity import check_source

    vocab = {**bpe_vocab(), "pre": "qwen2"}  # a pre-tokenizer edgekit has no reference for (yet)
    source = load_source(str(write_gguf(tmp_path / "q.gguf", vocab)))
    with pytest.raises(SourceCheckFailed, match=r"source check 'tokenizer\."):
        check_source(source)
    record = check_source(source, allow_implausible=True)
    assert record["tokenizer"]["built_by"] == "transformers GGUF conversion from q.gguf"
    checks = {c["name"]: c for c in record["checks"]}
    assert (
        "not supported yet" in checks["tokenizer.probes"]["detail"]
        and not checks["tokenizer.probes"]["passed"]
    )
    # transformers' conversion also adds a BOS the GGUF says not to add (tokenizer.ggml.add_bos_token = false).
    assert "add_bos_token=False" in checks["tokenizer.special_tokens"]["detail"]


def test_inspect_hf_folders(tiny_model) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("inspect", str(tiny_model("llama")), env=STRICT)
    assert res.returncode == 2 and "source check 'bits_per_byte' failed" in res.stderr
    assert (
        "bits_per_byte" in res.stdout
        and "FAILED" in res.stdout
        and "shipped with the source folder" in res.stdout
    )
    emb = run_cli("inspect", str(tiny_model("bert-emb")), "--json", env=STRICT)
    checks = {c["name"]: c for c in json.loads(emb.stdout)["sanity"]["checks"]}
    assert set(checks) == {
        "round_trip",
        "bytes_per_token",
    }  # no PPL for an encoder, no GGUF checks for a folder
    assert "recorded only" in checks["round_trip"]["limit"]

"""Profiles and targets as users write them: every mistake is exit 2 with the file and key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.catalog import parse
from edgekit.errors import ConfigError
from edgekit.specs import Profile, Target
from tests.conftest import REPO, run_cli
from tests.reliability.helpers import assert_clean_failure

PI5 = (REPO / "profiles" / "raspberry-pi-5.yaml").read_text()
ARM = (REPO / "targets" / "arm64.yaml").read_text()

CASES = {
    "unknown-key": (PI5 + "overclock: true\n", "overclock"),
    "nested-unknown-key": (PI5.replace("peak_rss_mb: 1500", "peak_rss_mb: 1500\n  peak_vram_mb: 3"), "peak_vram_mb"),
    "wrong-type": (PI5.replace("threads: 4", "threads: four"), "workload.threads"),
    "list-for-number": (PI5.replace("model_size_mb: 600", "model_size_mb: [600]"), "model_size_mb"),
    # Strict specs: a quoted number is a string, never coerced (pydantic's lax mode would turn '4' into 4).
    "string-for-int": (PI5.replace("threads: 4", "threads: '4'"), "workload.threads"),
    "string-for-float": (PI5.replace("peak_rss_mb: 1500", "peak_rss_mb: '1500'"), "peak_rss_mb"),
    "string-for-bool": (PI5.replace("cores: 4", "cores: 4\n  host: 'no'"), "host"),
    "threads-over-cores": (PI5.replace("threads: 4", "threads: 8"), "cores"),
    "rss-over-memory": (PI5.replace("peak_rss_mb: 1500", "peak_rss_mb: 9000"), "memory_mb"),
    "negative-budget": (PI5.replace("decode_tokens_per_s_min: 8", "decode_tokens_per_s_min: -8"), "decode_tokens_per_s_min"),
    "zero-budget": (PI5.replace("peak_rss_mb: 1500", "peak_rss_mb: 0"), "peak_rss_mb"),
    "missing-target": (PI5.replace("target: arm64", "target: riscv64"), "riscv64"),
    "unsupported-method": (PI5.replace("default_method: int8-weight", "default_method: fp16"), "fp16"),
    "unknown-method": (PI5.replace("default_method: int8-weight", "default_method: int2-magic"), "default_method"),
    "wrong-schema": (PI5.replace("edgekit/profile@1", "edgekit/profile@9"), "schema"),
    "not-a-mapping": ("- just\n- a list\n", "mapping"),
    "invalid-yaml": (PI5 + "budgets: [unclosed\n", "invalid YAML"),
    "yaml-bomb": ("a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
                  "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "aliases"),
    "ten-megabytes": (PI5 + ("# padding\n" * 1_100_000), "limited"),
    "not-utf8": (PI5.replace("Cortex", "Cort\udcffex"), "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_profile_via_cli(case: str, tmp_path: Path) -> None:
    text, word = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    res = run_cli("profiles", "show", str(path))
    assert_clean_failure(res, 2, word, path.name)


def test_bad_target_via_cli(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(ARM.replace("block_size: 32", "block_size: 48"))
    assert_clean_failure(run_cli("targets", "show", str(path)), 2, "block_size", "power of two")
    path.write_text(ARM.replace("device: cpu", "device: tpu"))
    assert_clean_failure(run_cli("targets", "show", str(path)), 2, "device")
    # export.dtype was never read (export always wrote fp32): it is no longer a setting, so naming it is an error.
    path.write_text(ARM.replace("export: {opset: 17}", "export: {opset: 17, dtype: fp16}"))
    assert_clean_failure(run_cli("targets", "show", str(path)), 2, "dtype")


def test_strict_specs_reject_strings_for_numbers() -> None:
    data = yaml.safe_load(PI5)
    assert parse(Profile, data, "pi5").workload.threads == 4
    data["workload"]["threads"] = "4"
    with pytest.raises(ConfigError, match=r"workload\.threads"):
        parse(Profile, data, "pi5")


def test_device_caps_bound_the_profile() -> None:
    data = yaml.safe_load(PI5)
    data["workload"]["threads"] = data["device"]["cores"]
    data["budgets"]["peak_rss_mb"] = data["device"]["memory_mb"]
    assert parse(Profile, data, "pi5").budgets.peak_rss_mb == data["device"]["memory_mb"]  # equal is fine
    with pytest.raises(ConfigError, match="memory_mb"):
        parse(Profile, {**data, "budgets": {**data["budgets"], "peak_rss_mb": data["device"]["memory_mb"] + 1}}, "pi5")


def test_missing_profile_file(tmp_path: Path) -> None:
    assert_clean_failure(run_cli("profiles", "show", str(tmp_path / "nope.yaml")), 2, "not found")


def test_unreadable_profile(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.mkdir()
    assert_clean_failure(run_cli("profiles", "show", str(path)), 2, "dir.yaml")


# ---------------------------------------------------------------- property-based: the parser never crashes

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
BASE: dict[str, Any] = yaml.safe_load(PI5)


def _paths(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_paths(BASE)), values)
def test_profile_parser_mutations(path: tuple[str, ...], value: Any) -> None:
    data = yaml.safe_load(PI5)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        profile = parse(Profile, data, "p.yaml")
    except ConfigError as exc:
        msg = exc.one_line()
        assert msg.startswith("p.yaml: ") and "\n" not in msg
        return
    # Whatever was accepted is sane: budgets positive, fractions in range.
    for v in profile.budgets.model_dump().values():
        assert v is None or v > 0
    f = profile.fidelity
    assert f.top1_agreement_min is None or 0 < f.top1_agreement_min <= 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_parsers_reject_arbitrary_mappings_cleanly(data: dict[str, Any]) -> None:
    for cls in (Profile, Target):
        with pytest.raises(ConfigError):
            parse(cls, data, "x.yaml")

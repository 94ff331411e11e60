from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.catalog import list_names, load_profile, load_target
from edgekit.errors import ConfigError
from tests.conftest import REPO, run_cli

PI5 = (REPO / "profiles" / "raspberry-pi-5.yaml").read_text()


def test_shipped_profiles_and_targets_load() -> None:
    profiles = list_names("profiles")
    assert {"raspberry-pi-5", "raspberry-pi-4", "android-midrange", "jetson-orin-nano", "x86-laptop", "local"} <= set(profiles)
    assert {"x86-avx2", "x86-avx512-vnni", "arm64", "cuda"} <= set(list_names("targets"))
    for name in profiles:
        profile = load_profile(name)
        assert profile.name == name
        assert load_target(profile.target).name == profile.target


def test_shipped_device_figures_cite_a_source() -> None:
    for path in (REPO / "profiles").glob("*.yaml"):
        if "host: true" not in path.read_text():
            assert "Source:" in path.read_text(), path


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda t: t + "colour: blue\n", "unknown key 'colour'"),
        (lambda t: t.replace("model_size_mb: 600", "model_size_mb: -5"), "budgets.model_size_mb"),
        (lambda t: t.replace("model_size_mb: 600", "model_size_mb: 0"), "budgets.model_size_mb"),
        (lambda t: t.replace("model_size_mb: 600", "model_size_mb: big"), "budgets.model_size_mb"),
        (lambda t: t.replace("top1_agreement_min: 0.90", "top1_agreement_min: 1.5"), "fidelity.top1_agreement_min"),
        (lambda t: t.replace("target: arm64", "target: z80"), "key 'target' = 'z80'"),
        (lambda t: t.replace("default_method: int8-weight", "default_method: fp16"), "'fp16' is not supported by target 'arm64'"),
        (lambda t: t.replace("default_method: int8-weight", "default_method: int3"), "default_method"),
        (lambda t: t.replace("budgets:", "budget:"), "unknown key 'budget'"),
    ],
)
def test_bad_profiles_name_file_and_key(tmp_path: Path, edit, expect: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, edit(PI5))
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    msg = info.value.one_line()
    assert str(path) in msg
    assert expect in msg
    assert "\n" not in msg


def test_yaml_aliases_and_huge_files_refused(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(ConfigError, match="aliases"):
        load_profile(str(_write(tmp_path, bomb)))
    with pytest.raises(ConfigError, match="limited"):
        load_profile(str(_write(tmp_path, PI5 + "#" * (300 * 1024), "big.yaml")))


def test_unknown_name_lists_shipped() -> None:
    with pytest.raises(ConfigError, match="raspberry-pi-5"):
        load_profile("no-such-device")


def test_cli_profiles_list_json() -> None:
    res = run_cli("profiles", "list", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data) >= 6
    assert all(p["schema"] == "edgekit/profile@1" for p in data)


def test_cli_bad_profiles_exit_2_one_line(tmp_path: Path) -> None:
    cases = {
        "unknown.yaml": (PI5 + "colour: blue\n", "colour"),
        "missing-target.yaml": (PI5.replace("target: arm64", "target: z80"), "target"),
    }
    for name, (text, key) in cases.items():
        path = _write(tmp_path, text, name)
        res = run_cli("profiles", "show", str(path))
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and key in lines[0], res.stderr
        assert "Traceback" not in res.stderr


def test_cli_targets_show_and_table() -> None:
    res = run_cli("targets", "show", "arm64", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["quantization"]["int8"]["weight_type"] == "qint8"
    res = run_cli("profiles", "list")
    assert "raspberry-pi-5" in res.stdout and "name" in res.stdout.splitlines()[0]

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from edgekit.catalog import load_profile
from edgekit.errors import InputError
from edgekit.gate import gate
from tests.conftest import REPO, run_cli


def report(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "schema": "edgekit/report@1",
        "variant": {"task": "text-generation"},
        "performance": {
            "variant": {"model_size_mb": {"value": 160.0, "unit": "MB"}, "peak_rss_mb": {"value": 400.0},
                        "decode_tokens_per_s": {"value": 60.0}, "ttft_ms": {"value": 90.0, "p95": 100.0}},
            "source": {}, "speedup": {},
            "device": {"decode_tokens_per_s": {"value": 20.0, "estimated": True},
                       "ttft_ms": {"value": 300.0, "p95": 320.0, "estimated": True}},
        },
        "fidelity": {"top1_agreement": {"value": 0.98, "ci95_low": 0.97, "ci95_high": 0.99, "n": 500},
                     "kld_mean": {"value": 0.002, "ci95_low": 0.001, "ci95_high": 0.003, "n": 500},
                     "ppl_ratio": {"value": 1.01, "ci95_low": 1.0, "ci95_high": 1.02, "n": 500}},
        "decode": {"metrics": {"kld_mean": {"value": 0.003, "ci95_low": 0.002, "ci95_high": 0.004, "n": 256}}},
    }
    for key, value in over.items():
        section, metric = key.split("__")
        target = r["fidelity"] if section == "fidelity" else r["performance"][section]
        target[metric] = value
    return r


def rule(result: Any, name: str) -> Any:
    return next(r for r in result.rules if r.name == name)


def test_passing_report_all_rules_with_margins() -> None:
    result = gate(report(), load_profile("raspberry-pi-5"))
    assert result.passed
    size = rule(result, "budgets.model_size_mb")
    assert size.value == 160 and size.threshold == 600 and size.margin == pytest.approx(440)
    assert size.margin_pct == pytest.approx(440 / 600 * 100)
    decode = rule(result, "budgets.decode_tokens_per_s_min")
    assert decode.value == 20 and decode.estimated  # the device estimate, not the host figure
    assert rule(result, "budgets.ttft_ms_p95").value == 320
    # An encoder metric on a causal report is not applicable, and not counted as passed.
    for name in ("budgets.latency_ms_p95", "fidelity.cosine_min", "fidelity.accuracy_ratio_min"):
        assert rule(result, name).status == "n/a" and rule(result, name).passed is None
    assert len([r for r in result.rules if r.passed]) == 8  # every applicable rule, and only those
    assert result.to_dict()["estimated"] == ["budgets.decode_tokens_per_s_min", "budgets.ttft_ms_p95"]


def test_metric_the_task_should_have_but_lacks_fails() -> None:
    r = report()
    del r["fidelity"]["kld_mean"]
    r["fidelity"]["ppl_ratio"] = {"value": float("nan"), "ci95_low": None, "ci95_high": None, "n": 0}
    result = gate(r, load_profile("raspberry-pi-5"))
    assert not result.passed
    assert {x.name for x in result.failed} == {"fidelity.kld_mean_max", "fidelity.ppl_ratio_max"}
    assert rule(result, "fidelity.kld_mean_max").status == "MISSING"
    assert "no kld_mean" in rule(result, "fidelity.kld_mean_max").describe()


def test_encoder_report_gates_encoder_rules() -> None:
    r = {"schema": "edgekit/report@1", "variant": {"task": "feature-extraction"},
         "performance": {"variant": {"model_size_mb": {"value": 20.0}, "peak_rss_mb": {"value": 100.0},
                                     "latency_ms": {"value": 5.0, "p95": 7.0}}, "device": None},
         "fidelity": {"cosine_mean": {"value": 0.985, "ci95_low": 0.98, "ci95_high": 0.99, "n": 16}}}
    result = gate(r, load_profile("x86-laptop"))
    assert [x.name for x in result.failed] == ["fidelity.cosine_min"]
    assert rule(result, "fidelity.cosine_min").margin == pytest.approx(-0.005)
    assert rule(result, "fidelity.cosine_min").margin_pct == pytest.approx(-0.505, abs=1e-3)
    assert rule(result, "budgets.latency_ms_p95").value == 7.0  # the p95, not the median
    assert rule(result, "budgets.decode_tokens_per_s_min").status == "n/a"
    assert rule(result, "fidelity.top1_agreement_min").status == "n/a"


@pytest.mark.parametrize("bad", [{"performance": []}, {"performance": {"variant": {"model_size_mb": {"value": "big"}}}},
                                 {"fidelity": {"kld_mean": 0.1}}])
def test_malformed_report_is_bad_input(bad: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="malformed"):
        gate({"schema": "edgekit/report@1", **bad}, load_profile("local"))


def test_failing_rules_first_with_how_far_off() -> None:
    bad = report(variant__model_size_mb={"value": 900.0}, fidelity__top1_agreement={"value": 0.5, "ci95_low": 0.45, "ci95_high": 0.55})
    result = gate(bad, load_profile("raspberry-pi-5"))
    assert not result.passed
    assert [r.name for r in result.failed] == ["budgets.model_size_mb", "fidelity.top1_agreement_min"]
    ordered = result.ordered()
    assert {ordered[0].name, ordered[1].name} == {"budgets.model_size_mb", "fidelity.top1_agreement_min"}
    assert rule(result, "budgets.model_size_mb").margin == pytest.approx(-300)
    assert rule(result, "fidelity.top1_agreement_min").margin == pytest.approx(-0.4)


def test_ci_straddling_threshold_is_flagged() -> None:
    r = report(fidelity__top1_agreement={"value": 0.91, "ci95_low": 0.88, "ci95_high": 0.93})
    top1 = rule(gate(r, load_profile("raspberry-pi-5")), "fidelity.top1_agreement_min")
    assert top1.passed and top1.uncertain


def test_estimate_range_straddling_threshold_is_uncertain_and_strict_fails_it() -> None:
    # Pi 5: decode >= 8 tok/s. The point estimate passes, but the device-efficiency range reaches below 8.
    straddling = {"value": 9.0, "estimated": True, "range": {"value": [6.5, 11.0]}}
    r = report(device__decode_tokens_per_s=straddling)
    profile = load_profile("raspberry-pi-5")
    lenient = gate(r, profile)
    decode = rule(lenient, "budgets.decode_tokens_per_s_min")
    assert decode.band == (6.5, 11.0) and decode.uncertain and decode.passed and lenient.passed
    assert lenient.to_dict()["uncertain"] == ["budgets.decode_tokens_per_s_min"]
    strict = gate(r, profile, strict=True)
    assert not strict.passed and [f.name for f in strict.failed] == ["budgets.decode_tokens_per_s_min"]
    assert "straddles" in rule(strict, "budgets.decode_tokens_per_s_min").describe()
    assert strict.to_dict()["strict"] is True
    # A range clear of the threshold holds under --strict; the p95 rule reads the p95's own range.
    clear = report(device__decode_tokens_per_s={"value": 12.0, "estimated": True, "range": {"value": [9.0, 15.0]}},
                   device__ttft_ms={"value": 300.0, "p95": 320.0, "estimated": True,
                                    "range": {"value": [200.0, 1600.0], "p95": [250.0, 1400.0]}})
    result = gate(clear, profile, strict=True)
    assert result.passed and rule(result, "budgets.ttft_ms_p95").band == (250.0, 1400.0)
    # Fidelity intervals count the same way under --strict.
    fid = report(fidelity__top1_agreement={"value": 0.91, "ci95_low": 0.88, "ci95_high": 0.93})
    assert gate(fid, profile).passed and not gate(fid, profile, strict=True).passed
    with pytest.raises(InputError, match="range"):
        gate(report(device__decode_tokens_per_s={"value": 9.0, "range": {"value": "wide"}}), profile)


def test_decode_path_rules() -> None:
    profile = load_profile("raspberry-pi-5")
    r = report()
    r["decode"]["metrics"]["kld_mean"] = {"value": 0.2, "ci95_low": 0.1, "ci95_high": 0.3, "n": 256}
    result = gate(r, profile)
    assert [f.name for f in result.failed] == ["fidelity.decode_kld_mean_max"]
    del r["decode"]  # a report from before the decode-path check proves nothing about decode
    assert rule(gate(r, profile), "fidelity.decode_kld_mean_max").status == "MISSING"
    data = profile.model_dump(by_alias=True)
    data["fidelity"]["decode_match_fraction_min"] = 0.5
    strict_floor = type(profile).model_validate(data)
    low = report()
    low["decode"]["metrics"]["match_fraction"] = {"value": 0.4, "ci95_low": 0.3, "ci95_high": 0.5, "n": 8}
    assert rule(gate(low, strict_floor), "fidelity.decode_match_fraction_min").status == "FAIL"
    enc = report()
    enc["variant"]["task"] = "feature-extraction"
    del enc["decode"]
    assert rule(gate(enc, profile), "fidelity.decode_kld_mean_max").status == "n/a"


def test_cli_gate_strict(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report(device__decode_tokens_per_s={"value": 9.0, "estimated": True,
                                                                   "range": {"value": [6.5, 11.0]}})))
    res = run_cli("gate", str(path), "--profile", "raspberry-pi-5")
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("pass ?") and "decode_tokens_per_s_min" in line for line in res.stdout.splitlines())
    res = run_cli("gate", str(path), "--profile", "raspberry-pi-5", "--strict")
    assert res.returncode == 1 and "decode_tokens_per_s_min" in res.stderr and "straddles" in res.stderr


def test_host_profile_uses_measured_values() -> None:
    r = report()
    r["performance"]["device"] = None
    result = gate(r, load_profile("x86-laptop"))
    decode = rule(result, "budgets.decode_tokens_per_s_min")
    assert decode.value == 60 and not decode.estimated


def test_baseline_regressions() -> None:
    profile = load_profile("raspberry-pi-5")
    base = report()
    slower = report(variant__decode_tokens_per_s={"value": 40.0}, fidelity__kld_mean={"value": 0.02})
    result = gate(slower, profile, baseline=base)
    assert {r.name for r in result.failed} == {"regression.decode_tokens_per_s", "regression.kld_mean"}
    decode = rule(result, "regression.decode_tokens_per_s")
    assert decode.threshold == pytest.approx(60 * 0.9) and decode.margin == pytest.approx(40 - 54)
    assert gate(base, profile, baseline=base).passed
    # A metric the baseline had and the new report lost is a regression, not a pass.
    lost = report()
    del lost["performance"]["variant"]["decode_tokens_per_s"]
    assert rule(gate(lost, profile, baseline=base), "regression.decode_tokens_per_s").status == "MISSING"


def test_junit_and_markdown() -> None:
    result = gate(report(variant__model_size_mb={"value": 900.0}), load_profile("raspberry-pi-5"))
    suite = ET.fromstring(result.junit_xml())
    cases = suite.findall("testcase")
    assert len(cases) == len(result.rules)
    assert suite.get("failures") == "1" and suite.get("skipped") == "3"
    assert len([c for c in cases if c.find("skipped") is not None]) == 3
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["budgets.model_size_mb"]
    md = result.markdown()
    assert "FAILED" in md and "| budgets.model_size_mb | 900 MB |" in md


def test_not_a_report() -> None:
    with pytest.raises(InputError, match="not an edgekit report"):
        gate({"schema": "something"}, load_profile("local"))


def test_cli_gate_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(report()))
    bad.write_text(json.dumps(report(variant__model_size_mb={"value": 900.0})))
    res = run_cli("gate", str(good), "--profile", "raspberry-pi-5", "--junit", str(tmp_path / "j.xml"),
                  "--markdown", str(tmp_path / "g.md"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "gate.json").is_file() and (tmp_path / "j.xml").is_file() and (tmp_path / "g.md").is_file()
    res = run_cli("gate", str(bad), "--profile", "raspberry-pi-5")
    assert res.returncode == 1
    assert res.stdout.splitlines()[2].startswith("FAIL")  # failing rules printed first
    assert "budgets.model_size_mb" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("gate", str(bad), "--profile", "raspberry-pi-5", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["passed"] is False
    (tmp_path / "junk.json").write_text("{not json")
    res = run_cli("gate", str(tmp_path / "junk.json"), "--profile", "raspberry-pi-5")
    assert res.returncode == 2 and "junk.json" in res.stderr
    res = run_cli("gate", str(good), "--profile", str(REPO / "no-such.yaml"))
    assert res.returncode == 2

"""Gate: Profile + BenchReport [+ baseline] → GateResult. A pure function; rendering to JSON/JUnit/Markdown.

Every budget and fidelity floor in the profile becomes a rule. A rule whose metric the report does not have
for this task is "n/a" — never counted as passed. Device figures that were estimated are gated, and labelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from edgekit.errors import InputError
from edgekit.specs import Profile

# profile key → (report section, metric, statistic, "max" | "min", unit)
BUDGET_RULES: dict[str, tuple[str, str, str, str, str]] = {
    "model_size_mb": ("variant", "model_size_mb", "value", "max", "MB"),
    "peak_rss_mb": ("variant", "peak_rss_mb", "value", "max", "MB"),
    "decode_tokens_per_s_min": ("device", "decode_tokens_per_s", "value", "min", "tok/s"),
    "ttft_ms_p95": ("device", "ttft_ms", "p95", "max", "ms"),
    "latency_ms_p95": ("device", "latency_ms", "p95", "max", "ms"),
}
FIDELITY_RULES: dict[str, tuple[str, str]] = {
    "top1_agreement_min": ("top1_agreement", "min"),
    "kld_mean_max": ("kld_mean", "max"),
    "ppl_ratio_max": ("ppl_ratio", "max"),
    "accuracy_ratio_min": ("accuracy_ratio", "min"),
    "cosine_min": ("cosine_mean", "min"),
}


@dataclass(frozen=True)
class RuleResult:
    name: str
    metric: str
    kind: str  # "max" | "min"
    threshold: float
    value: float | None
    unit: str = ""
    estimated: bool = False
    ci95: tuple[float, float] | None = None
    source: str = "budget"  # budget | fidelity | baseline

    @property
    def applicable(self) -> bool:
        return self.value is not None

    @property
    def passed(self) -> bool:
        if self.value is None:
            return True
        return self.value <= self.threshold if self.kind == "max" else self.value >= self.threshold

    @property
    def margin(self) -> float | None:
        """Signed headroom: positive = inside the budget, negative = how far off."""
        if self.value is None:
            return None
        return self.threshold - self.value if self.kind == "max" else self.value - self.threshold

    @property
    def margin_pct(self) -> float | None:
        m = self.margin
        return None if m is None or self.threshold == 0 else 100.0 * m / abs(self.threshold)

    @property
    def uncertain(self) -> bool:
        """The 95 % interval straddles the threshold: the point estimate decides, but barely."""
        return self.ci95 is not None and self.ci95[0] <= self.threshold <= self.ci95[1]

    @property
    def status(self) -> str:
        return "n/a" if not self.applicable else ("pass" if self.passed else "FAIL")

    def describe(self) -> str:
        op = "<=" if self.kind == "max" else ">="
        if self.value is None:
            return f"{self.name}: n/a (no {self.metric} for this task)"
        est = " (estimated)" if self.estimated else ""
        return (f"{self.name}: {self.value:.4g} {self.unit} {op} {self.threshold:.4g}{est} — {self.status}, "
                f"margin {self.margin:+.4g} ({self.margin_pct:+.1f}%)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(status=self.status, passed=self.passed if self.applicable else None, margin=self.margin,
                 margin_pct=self.margin_pct, uncertain=self.uncertain)
        return d


@dataclass(frozen=True)
class GateResult:
    profile: str
    rules: tuple[RuleResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules if r.applicable)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.applicable and not r.passed]

    def ordered(self) -> list[RuleResult]:
        """Failing rules first (worst margin first), then passes, then not-applicable ones."""
        rank = {"FAIL": 0, "pass": 1, "n/a": 2}
        return sorted(self.rules, key=lambda r: (rank[r.status], r.margin_pct if r.margin_pct is not None else 0))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgekit/gate@1", "profile": self.profile, "passed": self.passed,
                "failed": [r.name for r in self.failed], "rules": [r.to_dict() for r in self.ordered()]}

    def junit_xml(self) -> str:
        suite = ET.Element("testsuite", name=f"edgekit-gate-{self.profile}", tests=str(len(self.rules)),
                           failures=str(len(self.failed)), skipped=str(sum(not r.applicable for r in self.rules)))
        for rule in self.rules:
            case = ET.SubElement(suite, "testcase", classname=f"edgekit.gate.{self.profile}", name=rule.name)
            if not rule.applicable:
                ET.SubElement(case, "skipped", message=rule.describe())
            elif not rule.passed:
                ET.SubElement(case, "failure", message=rule.describe(), type=rule.source).text = rule.describe()
            else:
                ET.SubElement(case, "system-out").text = rule.describe()
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)

    def markdown(self) -> str:
        head = "PASSED" if self.passed else f"FAILED ({len(self.failed)} rule{'s' * (len(self.failed) != 1)})"
        lines = [f"### edgekit gate — `{self.profile}`: **{head}**", "",
                 "| rule | value | threshold | margin | status |", "|---|---|---|---|---|"]
        for r in self.ordered():
            value = "n/a" if r.value is None else f"{r.value:.4g} {r.unit}".strip() + (" (est.)" if r.estimated else "")
            op = "≤" if r.kind == "max" else "≥"
            margin = "" if r.margin_pct is None else f"{r.margin:+.4g} ({r.margin_pct:+.1f}%)"
            flag = " ⚠ CI straddles" if r.uncertain else ""
            lines.append(f"| {r.name} | {value} | {op} {r.threshold:.4g} | {margin} | {r.status}{flag} |")
        return "\n".join(lines) + "\n"


def _metric(report: dict[str, Any], section: str, metric: str, stat: str) -> tuple[float | None, bool]:
    perf = report.get("performance") or {}
    sections = [section, "variant"] if section == "device" else [section]
    for name in sections:
        entry = (perf.get(name) or {}).get(metric)
        if isinstance(entry, dict):
            value = entry.get(stat, entry.get("value"))
            if value is not None:
                return float(value), bool(entry.get("estimated", False))
    return None, False


def _fidelity(report: dict[str, Any], metric: str) -> tuple[float | None, tuple[float, float] | None]:
    entry = (report.get("fidelity") or {}).get(metric)
    if not isinstance(entry, dict) or entry.get("value") is None:
        return None, None
    lo, hi = entry.get("ci95_low"), entry.get("ci95_high")
    return float(entry["value"]), (float(lo), float(hi)) if lo is not None and hi is not None else None


def _baseline_rules(report: dict[str, Any], baseline: dict[str, Any], profile: Profile) -> list[RuleResult]:
    tol = profile.regression
    rules = []
    for metric, stat, kind, unit in (("decode_tokens_per_s", "value", "min", "tok/s"), ("latency_ms", "p95", "max", "ms"),
                                     ("model_size_mb", "value", "max", "MB")):
        base, _ = _metric(baseline, "variant", metric, stat)
        now, est = _metric(report, "variant", metric, stat)
        if base is None or now is None:
            continue
        pct = tol.max_size_increase_pct if metric == "model_size_mb" else tol.max_slowdown_pct
        limit = base * (1 - pct / 100) if kind == "min" else base * (1 + pct / 100)
        rules.append(RuleResult(f"regression.{metric}", metric, kind, limit, now, unit, est, source="baseline"))
    for metric, kind, delta in (("kld_mean", "max", tol.max_kld_increase), ("top1_agreement", "min", -tol.max_top1_drop)):
        base, _ = _fidelity(baseline, metric)
        now, ci = _fidelity(report, metric)
        if base is not None and now is not None:
            rules.append(RuleResult(f"regression.{metric}", metric, kind, base + delta, now, "", False, ci, "baseline"))
    return rules


def gate(report: dict[str, Any], profile: Profile, baseline: dict[str, Any] | None = None) -> GateResult:
    """Check a bench report against the profile's budgets and fidelity floors (and a baseline report)."""
    for name, rep in (("report", report), ("baseline", baseline)):
        if rep is not None and rep.get("schema") != "edgekit/report@1":
            raise InputError(f"{name} is not an edgekit report (schema {rep.get('schema')!r}, expected 'edgekit/report@1')")
    rules: list[RuleResult] = []
    for key, (section, metric, stat, kind, unit) in BUDGET_RULES.items():
        threshold = getattr(profile.budgets, key)
        if threshold is not None:
            value, estimated = _metric(report, section, metric, stat)
            rules.append(RuleResult(f"budgets.{key}", metric, kind, float(threshold), value, unit, estimated))
    for key, (metric, kind) in FIDELITY_RULES.items():
        threshold = getattr(profile.fidelity, key)
        if threshold is not None:
            value, ci = _fidelity(report, metric)
            rules.append(RuleResult(f"fidelity.{key}", metric, kind, float(threshold), value, "", False, ci, "fidelity"))
    if baseline is not None:
        rules += _baseline_rules(report, baseline, profile)
    return GateResult(profile.name, tuple(rules))

"""Gate: Profile + BenchReport [+ baseline] → GateResult. A pure function; rendering to JSON/JUnit/Markdown.

Every budget and fidelity floor in the profile becomes a rule. A rule whose metric does not exist for the
report's task is "n/a" — never counted as passed. A rule whose metric the task should have but the report lacks
is "missing" and fails: an unproven budget is not a kept one. Device figures that were estimated are gated on
their point value and labelled as estimates. A rule whose interval straddles its threshold (a fidelity rule's
95 % bootstrap interval, a device estimate's range from the device's efficiency band) is gated on the point
value and flagged "uncertain" (`?`); with `strict` an uncertain rule fails: only a verdict that holds across
the interval passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
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
# Which metrics each task produces (bench's report); a rule on any other metric is not applicable.
TASK_METRICS: dict[str, frozenset[str]] = {
    "text-generation": frozenset({"model_size_mb", "peak_rss_mb", "decode_tokens_per_s", "ttft_ms", "top1_agreement",
                                  "kld_mean", "ppl_ratio", "decode_match_fraction", "decode_kld_mean"}),
    "feature-extraction": frozenset({"model_size_mb", "peak_rss_mb", "latency_ms", "cosine_mean"}),
    "text-classification": frozenset({"model_size_mb", "peak_rss_mb", "latency_ms", "accuracy_ratio"}),
}
# How to get a metric the report lacks; said in the failing rule rather than left to guesswork.
MISSING_HINTS = {
    "accuracy_ratio": "needs labelled --eval-data, one 'label<TAB>text' a line",
    "decode_tokens_per_s": "needs workload.new_tokens > 1",
    "decode_match_fraction": "re-run `edgekit bench` (decode-path check, a variant with a KV cache)",
    "decode_kld_mean": "re-run `edgekit bench` (decode-path check, a variant with a KV cache)",
}
# Decode-path rules read the report's `decode.metrics` block, not `fidelity`.
DECODE_METRICS = {"decode_match_fraction": "match_fraction", "decode_kld_mean": "kld_mean"}
FIDELITY_RULES: dict[str, tuple[str, str]] = {
    "top1_agreement_min": ("top1_agreement", "min"),
    "kld_mean_max": ("kld_mean", "max"),
    "ppl_ratio_max": ("ppl_ratio", "max"),
    "accuracy_ratio_min": ("accuracy_ratio", "min"),
    "cosine_min": ("cosine_mean", "min"),
    "decode_match_fraction_min": ("decode_match_fraction", "min"),
    "decode_kld_mean_max": ("decode_kld_mean", "max"),
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
    expected: bool = False  # the report's task produces this metric
    band: tuple[float, float] | None = None  # an estimate's range (not a confidence interval)
    strict: bool = False  # an uncertain rule fails

    @property
    def applicable(self) -> bool:
        return self.expected or self.value is not None

    @property
    def passed(self) -> bool | None:
        """None when not applicable (never True by default); False when the metric is missing."""
        if not self.applicable:
            return None
        if self.value is None:
            return False
        if self.strict and self.uncertain:
            return False
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
        """The interval (fidelity CI or estimate range) straddles the threshold: the point value decides, barely."""
        return any(iv is not None and iv[0] <= self.threshold <= iv[1] for iv in (self.ci95, self.band))

    @property
    def status(self) -> str:
        if not self.applicable:
            return "n/a"
        if self.value is None:
            return "MISSING"
        return "pass" if self.passed else "FAIL"

    def describe(self) -> str:
        op = "<=" if self.kind == "max" else ">="
        if not self.applicable:
            return f"{self.name}: n/a (no {self.metric} for this task)"
        if self.value is None:
            hint = MISSING_HINTS.get(self.metric, "re-run `edgekit bench`")
            return f"{self.name}: MISSING — the report has no {self.metric} ({hint}); threshold {op} {self.threshold:.4g}"
        unit = f" {self.unit}" if self.unit else ""
        est = " (estimated)" if self.estimated else ""
        pct = "" if self.margin_pct is None else f" ({self.margin_pct:+.1f}%)"
        iv = self.band or self.ci95
        why = ""
        if self.uncertain and iv is not None:
            why = f"; interval [{iv[0]:.4g}, {iv[1]:.4g}] straddles the threshold" + (" (--strict)" if self.strict else "")
        return (f"{self.name}: {self.value:.4g}{unit}{est}, must be {op} {self.threshold:.4g}{unit} — {self.status}, "
                f"margin {self.margin:+.4g}{unit}{pct}{why}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(status=self.status, passed=self.passed, margin=self.margin,
                 margin_pct=self.margin_pct, uncertain=self.uncertain)
        return d


@dataclass(frozen=True)
class GateResult:
    profile: str
    rules: tuple[RuleResult, ...] = field(default_factory=tuple)
    task: str | None = None
    strict: bool = False

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.passed is False]

    def ordered(self) -> list[RuleResult]:
        """Failing rules first (worst margin first), then passes, then not-applicable ones."""
        rank = {"MISSING": 0, "FAIL": 0, "pass": 1, "n/a": 2}
        return sorted(self.rules, key=lambda r: (rank[r.status], r.margin_pct if r.margin_pct is not None else 0))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgekit/gate@1", "profile": self.profile, "task": self.task, "strict": self.strict,
                "passed": self.passed,
                "failed": [r.name for r in self.failed], "estimated": [r.name for r in self.rules if r.estimated],
                "uncertain": [r.name for r in self.rules if r.uncertain], "rules": [r.to_dict() for r in self.ordered()]}

    def junit_xml(self) -> str:
        suite = ET.Element("testsuite", name=f"edgekit-gate-{self.profile}", tests=str(len(self.rules)),
                           failures=str(len(self.failed)), skipped=str(sum(not r.applicable for r in self.rules)))
        for rule in self.rules:
            case = ET.SubElement(suite, "testcase", classname=f"edgekit.gate.{self.profile}", name=rule.name)
            if not rule.applicable:
                ET.SubElement(case, "skipped", message=rule.describe())
            elif rule.passed is False:
                ET.SubElement(case, "failure", message=rule.describe(), type=rule.source).text = rule.describe()
            else:
                ET.SubElement(case, "system-out").text = rule.describe()
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)

    def markdown(self) -> str:
        head = "PASSED" if self.passed else f"FAILED ({len(self.failed)} rule{'s' * (len(self.failed) != 1)})"
        lines = [f"### edgekit gate — `{self.profile}`: **{head}**", "",
                 "| rule | value | threshold | margin | status |", "|---|---|---|---|---|"]
        for r in self.ordered():
            value = r.status if r.value is None else f"{r.value:.4g} {r.unit}".strip() + (" (est.)" if r.estimated else "")
            op = "≤" if r.kind == "max" else "≥"
            margin = "" if r.margin_pct is None else f"{r.margin:+.4g} ({r.margin_pct:+.1f}%)"
            flag = " ⚠ interval straddles" if r.uncertain else ""
            lines.append(f"| {r.name} | {value} | {op} {r.threshold:.4g} | {margin} | {r.status}{flag} |")
        return "\n".join(lines) + "\n"


def _number(value: object, where: str) -> float | None:
    """A finite float, None when absent or NaN (not measured); anything else is a broken report."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"report is malformed: {where} is {value!r}, expected a number")
    return None if math.isnan(value) else float(value)


def _section(report: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = report
    for depth, key in enumerate(keys, 1):
        node = node.get(key)
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise InputError(f"report is malformed: '{'.'.join(keys[:depth])}' is not an object")
    return dict(node)


def _metric(report: dict[str, Any], section: str, metric: str, stat: str
            ) -> tuple[float | None, bool, tuple[float, float] | None]:
    """(value, estimated, range) of a performance metric; range only for estimates that carry one."""
    # A device estimate wins over the host measurement; without one (host profile, --on-device) the host's counts.
    for name in [section, "variant"] if section == "device" else [section]:
        entry = _section(report, "performance", name).get(metric)
        if isinstance(entry, dict):
            key = stat if entry.get(stat) is not None else "value"
            value = _number(entry.get(key), f"performance.{name}.{metric}.{key}")
            if value is not None:
                return value, bool(entry.get("estimated", False)), _range(entry, key, f"performance.{name}.{metric}")
        elif entry is not None:
            raise InputError(f"report is malformed: performance.{name}.{metric} is not an object")
    return None, False, None


def _range(entry: dict[str, Any], key: str, where: str) -> tuple[float, float] | None:
    ranges = entry.get("range")
    if ranges is None:
        return None
    pair = ranges.get(key) if isinstance(ranges, dict) else None
    if pair is None:
        return None
    if not (isinstance(pair, list) and len(pair) == 2):
        raise InputError(f"report is malformed: {where}.range.{key} is not a [low, high] pair")
    low, high = _number(pair[0], f"{where}.range.{key}"), _number(pair[1], f"{where}.range.{key}")
    return (low, high) if low is not None and high is not None else None


def _fidelity(report: dict[str, Any], metric: str) -> tuple[float | None, tuple[float, float] | None]:
    if metric in DECODE_METRICS:
        where = f"decode.metrics.{DECODE_METRICS[metric]}"
        entry = _section(report, "decode", "metrics").get(DECODE_METRICS[metric])
    else:
        where = f"fidelity.{metric}"
        entry = _section(report, "fidelity").get(metric)
    if entry is None:
        return None, None
    if not isinstance(entry, dict):
        raise InputError(f"report is malformed: {where} is not an object")
    value = _number(entry.get("value"), f"{where}.value")
    lo = _number(entry.get("ci95_low"), f"{where}.ci95_low")
    hi = _number(entry.get("ci95_high"), f"{where}.ci95_high")
    return value, (lo, hi) if value is not None and lo is not None and hi is not None else None


def report_task(report: dict[str, Any]) -> str | None:
    for section in ("variant", "source"):
        task = _section(report, section).get("task")
        if isinstance(task, str) and task in TASK_METRICS:
            return task
    return None


def _baseline_rules(report: dict[str, Any], baseline: dict[str, Any], profile: Profile) -> list[RuleResult]:
    """Not worse than the baseline by more than the profile's tolerance; a metric the baseline had must be there."""
    tol = profile.regression
    rules = []
    for metric, stat, kind, unit in (("decode_tokens_per_s", "value", "min", "tok/s"), ("ttft_ms", "p95", "max", "ms"),
                                     ("latency_ms", "p95", "max", "ms"), ("model_size_mb", "value", "max", "MB")):
        base, _, _ = _metric(baseline, "variant", metric, stat)
        if base is None:
            continue
        now, est, _ = _metric(report, "variant", metric, stat)
        pct = tol.max_size_increase_pct if metric == "model_size_mb" else tol.max_slowdown_pct
        limit = base * (1 - pct / 100) if kind == "min" else base * (1 + pct / 100)
        rules.append(RuleResult(f"regression.{metric}", metric, kind, limit, now, unit, est, source="baseline", expected=True))
    for metric, kind, delta in (("kld_mean", "max", tol.max_kld_increase), ("top1_agreement", "min", -tol.max_top1_drop)):
        base, _ = _fidelity(baseline, metric)
        if base is None:
            continue
        now, ci = _fidelity(report, metric)
        rules.append(RuleResult(f"regression.{metric}", metric, kind, base + delta, now, "", False, ci, "baseline", True))
    return rules


def gate(report: dict[str, Any], profile: Profile, baseline: dict[str, Any] | None = None, *,
         strict: bool = False) -> GateResult:
    """Check a bench report against the profile's budgets and fidelity floors (and a baseline report);
    `strict`: a rule whose interval straddles its threshold fails."""
    for name, rep in (("report", report), ("baseline", baseline)):
        if rep is not None and (not isinstance(rep, dict) or rep.get("schema") != "edgekit/report@1"):
            found = rep.get("schema") if isinstance(rep, dict) else type(rep).__name__
            raise InputError(f"{name} is not an edgekit report (schema {found!r}, expected 'edgekit/report@1')")
    task = report_task(report)
    metrics = TASK_METRICS.get(task or "", frozenset())
    rules: list[RuleResult] = []
    for key, (section, metric, stat, kind, unit) in BUDGET_RULES.items():
        threshold = getattr(profile.budgets, key)
        if threshold is not None:
            value, estimated, band = _metric(report, section, metric, stat)
            rules.append(RuleResult(f"budgets.{key}", metric, kind, float(threshold), value, unit, estimated,
                                    expected=metric in metrics, band=band))
    for key, (metric, kind) in FIDELITY_RULES.items():
        threshold = getattr(profile.fidelity, key)
        if threshold is not None:
            value, ci = _fidelity(report, metric)
            rules.append(RuleResult(f"fidelity.{key}", metric, kind, float(threshold), value, "", False, ci, "fidelity",
                                    metric in metrics))
    if baseline is not None:
        rules += _baseline_rules(report, baseline, profile)
    if strict:
        rules = [replace(r, strict=True) for r in rules]
    return GateResult(profile.name, tuple(rules), task, strict)

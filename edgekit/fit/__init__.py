"""`fit`: budget-first search for the cheapest variant that passes a profile.

1. Candidate space from the target's methods and their knobs (int4 block sizes, …).
2. Cheap pruning: size and roofline estimates from the parameter count rule out what cannot meet the budget.
3. The source's outputs on the eval text once (cached: bench/sourceref.py); export once per target.
4. Compress + fidelity on an executor (fit/executors.py: inline, process pool, Ray), cheapest first, shared by the
   profiles of one target; then latency serially on this host, per profile; gate (fit/search.py).
5. Rank: the smallest passing model (ties → lowest fidelity loss); a Pareto front over size, speed, fidelity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from edgekit.records import Report
from edgekit.source import SourceModel, read_safetensors_header
from edgekit.specs import Profile, Target

if TYPE_CHECKING:
    from edgekit.bench.sourceref import SourceOutputs

log = logging.getLogger(__name__)

INT4_BLOCKS = (32, 64, 128)
BITS = {"fp32": 32.0, "fp16": 16.0}
EMBED_NAMES = ("embed_tokens", "wte", "word_embeddings")
# Estimates are rough (±30 %): prune only what misses by more than this factor.
PRUNE_SLACK = 1.3


@dataclass(frozen=True)
class Candidate:
    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return self.method + "".join(f"/{k}={v}" for k, v in self.options)


@dataclass(frozen=True)
class EvalOptions:
    """What every candidate is compressed and benched with (picklable: it travels to worker processes)."""

    bench: dict[str, Any] = field(default_factory=dict)
    calibration: Path | None = None


@dataclass
class Outcome:
    candidate: Candidate
    estimate: dict[str, float | None]
    status: str = "pending"  # pruned | skipped | failed | benched (fidelity only) | rejected | passed | chosen
    reason: str = ""
    figures: dict[str, float | None] = field(default_factory=dict)
    failed_rules: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None
    report: dict[str, Any] | None = None
    gate: Any = None
    pareto: bool = False
    seconds: float = 0.0  # compress + fidelity, on its worker
    quality: dict[str, Any] | None = None
    worker: dict[str, Any] | None = None
    latency_seconds: float = 0.0  # on the driver
    latency_profile: str = ""  # the profile whose host measurement this is (shared by equal workloads)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.candidate.label, "method": self.candidate.method, "options": dict(self.candidate.options),
                "status": self.status, "reason": self.reason, "estimate": self.estimate, "figures": self.figures,
                "failed_rules": self.failed_rules, "pareto": self.pareto, "seconds": round(self.seconds, 1),
                "latency_seconds": round(self.latency_seconds, 1), "latency_measured_for": self.latency_profile or None,
                "fidelity_worker": self.worker}


def candidate_space(target: Target, methods: list[str] | None = None) -> list[Candidate]:
    chosen = methods or [m for m in target.supports if m != "distill"]
    out: list[Candidate] = []
    for method in chosen:
        if method.startswith("int4"):
            out += [Candidate(method, (("block_size", b),)) for b in INT4_BLOCKS]
        else:
            out.append(Candidate(method))
    return out


class ParamSplit(NamedTuple):
    """Parameters by role, read from safetensors headers: the token table, the lm_head weight (a tied model's is the
    table itself: one tensor in the checkpoint, two in an fp32 decoder graph), and the rest."""

    embed: int
    head: int
    other: int
    tied: bool


def parameter_split(source: SourceModel) -> ParamSplit:
    """Split the source's parameters by role without loading weights."""
    embed = head = other = 0
    for path in source.weight_files:
        if path.suffix != ".safetensors":
            continue
        for name, info in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            if "lm_head" in name:
                head += n
            elif any(k in name for k in EMBED_NAMES):
                embed += n
            else:
                other += n
    tied = source.task == "text-generation" and not head and bool(source.config.get("tie_word_embeddings", True))
    return ParamSplit(embed, embed if tied else head, other, tied)


def bits_per_weight(c: Candidate, target: Target, *, rotated: bool = False,
                    tied: bool = True) -> tuple[float, float, float | None]:
    """(body, lm_head, token table) bits per weight as written, block scales and zero points included, with the
    block sizes compress would use on `target` (compress/specs.py); the table's is None where a tied table is
    stored once, as the lm_head's blocks (weight-only methods: compress/shared.py)."""
    if c.method in ("int8-dynamic", "int8-static"):
        return 8.0, 8.0, 32.0  # per-channel: a scale per output column is noise; the Gather stays float
    if c.method not in ("int8-weight", "int4-rtn", "int4-hqq", "int4-gptq"):
        bits = BITS.get(c.method, 32.0)
        return bits, bits, bits
    from edgekit.compress.specs import WeightOnlySpec, method_spec

    spec = method_spec(c.method, target, rotated=rotated, **dict(c.options))
    assert isinstance(spec, WeightOnlySpec)
    # Zero points: `bits`-bit integers when asymmetric; HQQ's float ones become fp32 block offsets
    # (compress/offsets.py); none when symmetric.
    zero = 32.0 if spec.algo == "hqq" else 0.0 if spec.symmetric else float(spec.bits)
    scale = 16.0 if spec.scale_dtype == "float16" else 32.0
    body = spec.bits + (scale + zero) / spec.block_size
    head_bits = spec.bits if spec.lm_head_bits is None else spec.lm_head_bits
    head_block = spec.lm_head_block_size or spec.block_size
    if not head_bits:
        head = 32.0
    elif head_bits != spec.bits or head_block != spec.block_size:
        head = head_bits + scale / head_block  # its own pass: symmetric
    else:
        head = body
    if tied and spec.embed_bits and head_bits:
        return body, head, None
    # An own table: 8-bit asymmetric (an 8-bit zero point per block), at the body's block size.
    table = spec.embed_bits + (scale + spec.embed_bits) / spec.block_size if spec.embed_bits else 32.0
    return body, head, table


def offset_indicator_bytes(c: Candidate, config: dict[str, Any] | None, target: Target) -> float:
    """int4-hqq's float zero points become a MatMul of block sums against a 0/1 indicator [K, K/block] (fp32) per
    distinct input of each layer (compress/offsets.py): the MLP down input (intermediate size) and ~3 of hidden size."""
    if c.method != "int4-hqq" or not config:
        return 0.0
    layers = int(config.get("num_hidden_layers") or 0)
    hidden, inter = int(config.get("hidden_size") or 0), int(config.get("intermediate_size") or 0)
    block = float(dict(c.options).get("block_size") or target.quantization.int4.block_size)
    return layers * (inter**2 + 3 * hidden**2) * 4 / block


def estimate(c: Candidate, split: ParamSplit, profile: Profile, target: Target,
             config: dict[str, Any] | None = None) -> dict[str, float | None]:
    """Model size as written on `target` (bits per weight with scales and zero points; a tied table once for
    weight-only methods, twice otherwise; HQQ's offset indicators); device decode speed from the device's effective
    bandwidth (datasheet × its efficiency, as the bench's estimates use) / bytes read per token, which leave out a
    token table of its own: its Gather reads one row."""
    from edgekit.bench.roofline import device_roofs
    from edgekit.export.rotation import method_target

    # fit compresses each method from the export a build would make (search.Shared.parent): int8-weight's rotated.
    rotated = method_target(target, c.method).export.rotate.mode != "off"
    body_bits, head_bits, table_bits = bits_per_weight(c, target, rotated=rotated, tied=split.tied)
    table = split.embed * (table_bits or 0.0) / 8
    size = split.other * body_bits / 8 + split.head * head_bits / 8 + table + offset_indicator_bytes(c, config, target)
    dev = profile.device
    decode = None
    if not dev.host and dev.memory_bandwidth_gbps:
        decode = device_roofs(dev)["value"][0] * 1e9 / (size - table)
    return {"size_mb": round(size / 1e6, 3), "decode_tokens_per_s": None if decode is None else round(decode, 1)}


def prune(outcome: Outcome, profile: Profile, task: str) -> None:
    b = profile.budgets
    size = outcome.estimate["size_mb"]
    decode = outcome.estimate["decode_tokens_per_s"]
    if b.model_size_mb and size and size > b.model_size_mb * PRUNE_SLACK:
        outcome.status, outcome.reason = "pruned", f"budgets.model_size_mb: estimated size {size:.3g} MB > budget {b.model_size_mb:g} MB"
    elif task == "text-generation" and b.decode_tokens_per_s_min and decode and decode * PRUNE_SLACK < b.decode_tokens_per_s_min:
        outcome.status = "pruned"
        outcome.reason = (f"budgets.decode_tokens_per_s_min: estimated decode {decode:.3g} tok/s < budget "
                          f"{b.decode_tokens_per_s_min:g} tok/s")


def figures(report: dict[str, Any]) -> dict[str, float | None]:
    """What fit compares candidates on: size, speed (the device estimate where there is one), fidelity."""
    rep = Report(report)

    def pick(section: str, metric: str) -> float | None:
        return rep.value(section, metric)

    def f(metric: str) -> float | None:
        return rep.value("fidelity", metric)

    return {"size_mb": pick("variant", "model_size_mb"),
            "decode_tokens_per_s": pick("device", "decode_tokens_per_s") or pick("variant", "decode_tokens_per_s"),
            "latency_ms": pick("device", "latency_ms") or pick("variant", "latency_ms"),
            "top1_agreement": f("top1_agreement"), "kld_mean": f("kld_mean"), "ppl_ratio": f("ppl_ratio"),
            "cosine_mean": f("cosine_mean"), "agreement": f("agreement")}


def evaluate(c: Candidate, exported: Path, source: SourceModel, profile: Profile, target: Target, work: Path,
             opts: EvalOptions, outputs: SourceOutputs) -> tuple[Path, dict[str, Any]]:
    """Compress one candidate and check its fidelity against the source's cached outputs (runs on a worker)."""
    from edgekit.artifact import OnnxArtifact
    from edgekit.bench.core import bench_quality
    from edgekit.compress import compress

    artifact = OnnxArtifact.load(exported)
    variant = (artifact if c.method == "fp32"
               else compress(artifact, c.method, target, work, calibration=opts.calibration, **dict(c.options)))
    keys = ("eval_data", "eval_tokens", "decode_prompts")
    quality = bench_quality(variant, source, profile, outputs=outputs,
                            **{k: v for k, v in opts.bench.items() if k in keys})
    return variant.path, quality


def _loss(o: Outcome) -> float:
    f = o.figures
    if f.get("kld_mean") is not None:
        return float(f["kld_mean"])  # type: ignore[arg-type]
    for key in ("cosine_mean", "agreement", "top1_agreement"):
        if f.get(key) is not None:
            return 1.0 - float(f[key])  # type: ignore[arg-type]
    return 0.0


def mark_pareto(outcomes: list[Outcome]) -> None:
    """Non-dominated over (size ↓, decode speed ↑, fidelity loss ↓) among the benched candidates."""
    built = [o for o in outcomes if o.report is not None]

    def key(o: Outcome) -> tuple[float, float, float]:
        f = o.figures
        latency = f.get("latency_ms")
        speed = f.get("decode_tokens_per_s") or (1e3 / latency if latency else 0.0)
        return float(f.get("size_mb") or 0.0), -float(speed or 0.0), _loss(o)

    for o in built:
        k = key(o)
        o.pareto = not any(
            all(a <= b for a, b in zip(key(p), k, strict=True)) and key(p) != k for p in built if p is not o
        )


def choose(outcomes: list[Outcome]) -> Outcome | None:
    passing = [o for o in outcomes if o.status == "passed"]
    if not passing:
        return None
    best = min(passing, key=lambda o: (round(float(o.figures.get("size_mb") or 0.0), 1), _loss(o)))
    best.status = "chosen"
    return best


def nearest_miss(outcomes: list[Outcome]) -> Outcome | None:
    """The benched candidate whose worst failing rule is closest to its threshold."""
    rejected = [o for o in outcomes if o.status == "rejected" and o.failed_rules]
    if rejected:
        return min(rejected, key=lambda o: max(abs(r.get("margin_pct") or 0.0) for r in o.failed_rules))
    # Nothing was benched: every candidate was pruned by its estimate; the smallest one misses by least.
    pruned = [o for o in outcomes if o.status == "pruned"]
    return min(pruned, key=lambda o: o.estimate["size_mb"] or 0.0) if pruned else None


@dataclass
class FitResult:
    outcomes: list[Outcome]
    chosen: Outcome | None
    nearest: Outcome | None
    bundle: Path | None
    profile: str = ""

    @property
    def passed(self) -> bool:
        return self.chosen is not None


def fit(source_spec: str, profile: Profile, out: Path | str, *, methods: list[str] | None = None,
        max_candidates: int = 12, time_budget_min: float = 60.0, workers: int = 1,
        bench_options: dict[str, Any] | None = None, calibration: Path | None = None,
        command: str = "", allow_implausible_source: bool = False, executor: str = "local",
        address: str | None = None) -> FitResult:
    """Search the candidate space; write the chosen bundle (or the nearest miss, marked failed) at `out`."""
    from edgekit.fit.executors import ExecutorSpec
    from edgekit.fit.run import FitOptions, fit_profiles

    opts = FitOptions(methods=methods, max_candidates=max_candidates, time_budget_min=time_budget_min,
                      executor=ExecutorSpec(executor, workers, address), bench_options=bench_options or {},
                      calibration=calibration, command=command, allow_implausible_source=allow_implausible_source)
    return fit_profiles(source_spec, [profile], Path(out), opts)[0]

"""fit.json, fit.md and the Pareto PNG: every candidate, its figures, and why it was or wasn't picked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.specs import Profile

if TYPE_CHECKING:
    from edgekit.fit import Outcome


def _fmt(v: object, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def fit_markdown(outcomes: list[Any], chosen: Outcome | None, nearest: Outcome | None, profile: Profile) -> str:
    lines = [f"# edgekit fit — profile `{profile.name}`", ""]
    if chosen is not None:
        lines.append(f"**Chosen: `{chosen.candidate.label}`** — {_fmt(chosen.figures.get('size_mb'), '.1f')} MB, "
                     "the smallest candidate that passes every rule.")
    elif nearest is not None:
        lines.append(f"**No candidate fits.** Nearest miss: `{nearest.candidate.label}` — {nearest.reason}")
    else:
        lines.append("**No candidate fits**, and none could be benched (see the reasons below).")
    lines += ["", "| candidate | status | est. MB | MB | decode tok/s | top-1 | KLD | cosine | Pareto | reason |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        f = o.figures
        lines.append(
            f"| {o.candidate.label} | {o.status} | {_fmt(o.estimate.get('size_mb'), '.0f')} | {_fmt(f.get('size_mb'), '.1f')} "
            f"| {_fmt(f.get('decode_tokens_per_s'), '.1f')} | {_fmt(f.get('top1_agreement'), '.3f')} "
            f"| {_fmt(f.get('kld_mean'), '.4f')} | {_fmt(f.get('cosine_mean'), '.4f')} | {'yes' if o.pareto else ''} "
            f"| {o.reason.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def pareto_png(outcomes: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    built = [o for o in outcomes if o.figures.get("size_mb") is not None]
    causal = any(o.figures.get("kld_mean") is not None for o in built)
    metric, label = ("kld_mean", "KLD vs source (lower is better)") if causal else ("cosine_mean", "cosine vs source")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in built:
        y = o.figures.get(metric)
        if y is None:
            continue
        ok = o.status in ("passed", "chosen")
        if ok:
            ax.scatter(o.figures["size_mb"], y, marker="o", s=80 if o.status == "chosen" else 40, color="tab:green",
                       edgecolors="black" if o.pareto else "none")
        else:  # an unfilled marker has no edge: the Pareto flag shows as a thicker cross
            ax.scatter(o.figures["size_mb"], y, marker="x", s=40, color="tab:red", linewidths=2.5 if o.pareto else 1.0)
        ax.annotate(o.candidate.label, (o.figures["size_mb"], y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel(label)
    if causal:
        ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title("edgekit fit: green passes the profile; black edge / bold cross = Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_fit_files(outcomes: list[Any], chosen: Outcome | None, nearest: Outcome | None, profile: Profile, folder: Path,
                    context: dict[str, Any] | None = None) -> dict[str, Path]:
    """`context`: how the fit ran: executor and its workers, the source outputs (cache key, hit), which host
    timed latency (`latency_host`; each candidate's `fidelity_worker` says where its fidelity ran)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema": "edgekit/fit@1", "profile": profile.name,
            "chosen": chosen.candidate.label if chosen else None,
            "nearest_miss": {"label": nearest.candidate.label, "reason": nearest.reason} if nearest else None,
            **(context or {}),
            "candidates": [o.to_dict() for o in outcomes]}
    files = {"fit.json": folder / "fit.json", "fit.md": folder / "fit.md", "fit.png": folder / "fit.png"}
    files["fit.json"].write_text(json.dumps(data, indent=2, default=str))
    files["fit.md"].write_text(fit_markdown(outcomes, chosen, nearest, profile))
    pareto_png(outcomes, files["fit.png"])
    return files

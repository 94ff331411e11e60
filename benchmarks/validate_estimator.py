"""Validate the device estimator where the truth is at hand: this host at 1 thread and at 2 threads.

Each thread count is a "device" whose truth we can measure. The estimator scales the measurement at one thread
count by the ratio of the host's measured rooflines (bandwidth and fp32 peak, `host_roofline`) to predict the
other; the table gives the prediction, the measurement and the error. Both thread counts run interleaved in their
own processes (`measure_pair`), so background load hits them alike. The "device" here is the host itself, so its
efficiency is exactly 1: this checks the roofline scaling, not the cited device efficiencies.

    PYTHONPATH=. python benchmarks/validate_estimator.py VARIANT_DIR [--source example:smollm2-135m] [--max-time 20]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from edgekit.artifact import OnnxArtifact
from edgekit.bench.fidelity import eval_token_ids
from edgekit.bench.hostinfo import host_info
from edgekit.bench.latency import generation_metrics, measure_pair
from edgekit.bench.roofline import estimate_device, host_key, host_roofline
from edgekit.source import load_source
from edgekit.specs import Profile

METRICS = (("decode_tokens_per_s", "value"), ("ttft_ms", "value"), ("ttft_ms", "p95"))


def as_device(figures: dict[str, Any], threads: int, prompt: int, new: int) -> Profile:
    exact = {"value": 1.0, "low": 1.0, "high": 1.0}
    return Profile.model_validate(
        {
            "schema": "edgekit/profile@1",
            "name": f"host-{threads}t",
            "target": "x86-avx2",
            "device": {
                "cores": threads,
                "memory_mb": 1024,
                "memory_bandwidth_gbps": figures["memory_bandwidth_gbps"],
                "peak_gflops_fp32": figures["peak_gflops_fp32"],
                "bandwidth_efficiency": exact,
                "compute_efficiency": exact,
            },
            "workload": {"prompt_tokens": prompt, "new_tokens": new, "threads": threads},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", type=Path)
    ap.add_argument("--source", default="example:smollm2-135m")
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    variant, source = OnnxArtifact.load(args.variant), load_source(args.source)
    prompt = eval_token_ids(source.load_tokenizer(), None, args.prompt_tokens)
    base = {
        "engine": "onnx",
        "task": "text-generation",
        "model_file": str(variant.model_file),
        "providers": ["CPUExecutionProvider"],
        "prompt": prompt,
        "new_tokens": args.new_tokens,
        "max_time_s": args.max_time,
    }
    load_before = os.getloadavg()[0]
    raw = measure_pair(
        {f"{t}t": {**base, "threads": t} for t in (1, 2)},
        lambda r: r[0] + sum(r[1]),
        max_time_s=args.max_time,
    )
    measured = {
        t: generation_metrics(
            len(prompt), [s[0] for s in raw[f"{t}t"]["samples"]], [s[1] for s in raw[f"{t}t"]["samples"]]
        )
        for t in (1, 2)
    }
    host = host_info()
    roofs = {t: host_roofline(host_key(host), t) for t in (1, 2)}
    params = float(source.fingerprint.get("parameters") or 0)
    rows = []
    for src_t, dst_t in ((2, 1), (1, 2)):
        device = as_device(roofs[dst_t], dst_t, args.prompt_tokens, args.new_tokens)
        est = estimate_device(
            measured[src_t],
            "text-generation",
            variant.method,
            variant.size_mb * 1e6,
            params,
            source.config,
            device,
            roofs[src_t],
        )
        for metric, stat in METRICS:
            predicted, truth = est[metric][stat], measured[dst_t][metric][stat]
            rows.append(
                {
                    "from_threads": src_t,
                    "to_threads": dst_t,
                    "metric": f"{metric} {stat}",
                    "estimated": round(predicted, 2),
                    "measured": round(truth, 2),
                    "error_pct": round(100 * (predicted - truth) / truth, 1),
                }
            )
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(
        f"load average before/after: {load} on {os.cpu_count()} CPUs; runs {[v['runs'] for v in raw.values()]}"
    )
    out = {
        "host": host,
        "load_average": load,
        "rooflines": roofs,
        "variant": str(args.variant),
        "method": variant.method,
        "runs": {k: v["runs"] for k, v in raw.items()},
        "rows": rows,
    }
    print("| from → to | metric | estimated | measured | error |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['from_threads']} → {r['to_threads']} threads | {r['metric']} | {r['estimated']} | "
            f"{r['measured']} | {r['error_pct']:+.1f} % |"
        )
    if args.output:
        args.output.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

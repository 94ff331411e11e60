"""Huge pages off vs on (edgekit.runtime.hugepages), alternating fresh processes on the same model folders.

    .venv/bin/python benchmarks/hugepages_ab.py MODEL_DIR [MODEL_DIR ...] [--pairs 3] [--threads 1]

Each process loads one session (EDGEKIT_HUGE_PAGES=0 or 1), warms up, then times 3 generations of 64 greedy
tokens after a 64-token prompt: decode tok/s = 1 / median step, TTFT = prefill + first pick, plus how much of the
process huge pages back at the end. Off and on alternate, so host drift hits both; read the pairs, not the means.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys
import numpy as np
from pathlib import Path
from edgekit.runtime import Decoder, hugepages, make_session
dec = Decoder(make_session(Path(sys.argv[1]) / "model.onnx", threads=int(sys.argv[2])))
prompt = [int(x) for x in np.random.default_rng(0).integers(100, 20000, 64)]
dec.generate(prompt, 4)
runs = [dec.generate(prompt, 64) for _ in range(3)]
print(json.dumps({"tok_s": float(np.median([1 / np.median(r.step_s) for r in runs])),
                  "ttft_ms": float(np.median([r.ttft_s for r in runs]) * 1e3),
                  "huge_mib": hugepages.anon_huge_mib()}))
"""


def one(folder: Path, on: bool, threads: int) -> dict[str, float]:
    env = {**os.environ, "EDGEKIT_HUGE_PAGES": "1" if on else "0", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(threads)], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print("| model | pair | decode tok/s off → on | ratio | TTFT ms off → on | MiB in huge pages off → on |\n"
          "|---|---|---|---|---|---|")
    for folder in args.folders:
        ratios = []
        for pair in range(1, args.pairs + 1):
            off, on = one(folder, False, args.threads), one(folder, True, args.threads)
            ratios.append(on["tok_s"] / off["tok_s"])
            print(f"| {folder.name} | {pair} | {off['tok_s']:.1f} → {on['tok_s']:.1f} | {ratios[-1]:.2f}× "
                  f"| {off['ttft_ms']:.0f} → {on['ttft_ms']:.0f} | {off['huge_mib']:.0f} → {on['huge_mib']:.0f} |",
                  flush=True)
        print(f"| {folder.name} | median | | {statistics.median(ratios):.2f}× | | |", flush=True)


if __name__ == "__main__":
    main()

"""What this host's kernels can do, measured alone: the ceilings issue 20's decode and TTFT targets run into.

    .venv/bin/python benchmarks/kernel_rates.py [-o results.json]

- MatMulNBits at one decode token (M=1), accuracy_level 4 (int8 activations, the targets' setting), per bits ×
  block size × zero points, on SmolLM2's shapes: weights/s, in 4 KiB pages and in huge pages (edgekit.runtime's
  default). Each graph holds 120 copies of the matrix (100+ MB), so the weights stream from DRAM as a decode step's
  do, not from L3 as one small matrix's would.
- The same at float zero points (HQQ's output): onnxruntime's fast kernels take integer ones only.
- Float GEMM at a 64-token prefill (M=64): fp32 MatMul, fp16 MatMul, bf16 MatMul (refused: no CPU kernel), with
  PyTorch's fp32 GEMM as a second opinion on the core's fp32 peak.
- Read bandwidth at 1 and 2 threads (torch sum of 512 MiB): the ceiling of a bandwidth-bound 2-thread decode.
Absolute rates move with host load; the ratios inside one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

COPIES = 120  # matrices per graph: > L3 (32 MiB here) for every shape below
SHAPES = {"gate_up 576x3072": (576, 3072), "down 1536x576": (1536, 576)}


def _nbits_graph(k: int, n: int, bits: int, block: int, zero: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = (k + block - 1) // block
    nodes, inits, outs = [], [], []
    for r in range(COPIES):
        inits += [numpy_helper.from_array(rng.integers(0, 255, (n, blocks, block * bits // 8), dtype=np.uint8), f"q{r}"),
                  numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01 + 1e-3, f"s{r}")]
        ins = ["x", f"q{r}", f"s{r}"]
        if zero == "uint":
            zb = (blocks * bits + 7) // 8
            inits.append(numpy_helper.from_array(rng.integers(0, 255, n * zb, dtype=np.uint8), f"z{r}"))
            ins.append(f"z{r}")
        elif zero == "float":
            inits.append(numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 15, f"z{r}"))
            ins.append(f"z{r}")
        nodes.append(helper.make_node("MatMulNBits", ins, [f"y{r}"], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=4))
        outs.append(helper.make_tensor_value_info(f"y{r}", TensorProto.FLOAT, [1, 1, n]))
    graph = helper.make_graph(nodes, "rates", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return bytes(model.SerializeToString())


def _session(proto: bytes, threads: int = 1, huge_pages: bool = False) -> Any:
    """A plain onnxruntime session; `huge_pages`: its new mappings moved to 2 MiB pages as edgekit.runtime does."""
    import onnxruntime as ort

    from edgekit.runtime import hugepages

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    before = hugepages.anonymous_mappings()
    sess = ort.InferenceSession(proto, opts, providers=["CPUExecutionProvider"])
    if huge_pages:
        hugepages.collapse_new(before)
    return sess


def _median_s(call: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def nbits_rates() -> list[dict[str, Any]]:
    rows = []
    for label, (k, n) in SHAPES.items():
        x = np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)
        for bits, block, zero in [(4, b, z) for b in (32, 64, 128) for z in ("none", "uint")] + \
                                 [(8, b, "none") for b in (32, 64, 128)] + [(4, 32, "float")]:
            row: dict[str, Any] = {"shape": label, "bits": bits, "block": block, "zero_points": zero}
            for pages, huge in (("4k", False), ("huge", True)):
                sess = _session(_nbits_graph(k, n, bits, block, zero), huge_pages=huge)
                # The best of three medians: one transient on a shared host should not make a block size look slow.
                seconds = min(_median_s(lambda s=sess, x=x: s.run(None, {"x": x}), 3 if zero == "float" else 15)
                              for _ in range(3))
                row[f"gweights_per_s_{pages}"] = round(COPIES * k * n / seconds / 1e9, 2)
                del sess
            rows.append(row)
    return rows


def gemm_rates(m: int = 64, k: int = 576, n: int = 3072) -> list[dict[str, Any]]:
    from onnx import TensorProto, helper

    rows = []
    for name, ttype, dtype in (("fp32", TensorProto.FLOAT, np.float32), ("fp16", TensorProto.FLOAT16, np.float16),
                               ("bf16", TensorProto.BFLOAT16, None)):
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                                  [helper.make_tensor_value_info("a", ttype, [m, k]),
                                   helper.make_tensor_value_info("b", ttype, [k, n])],
                                  [helper.make_tensor_value_info("c", ttype, [m, n])])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        try:
            sess = _session(proto)
        except Exception as exc:  # the refusal is the measurement
            rows.append({"engine": "onnxruntime MatMul", "dtype": name, "gflops": None, "refused": str(exc).splitlines()[0][:160]})
            continue
        a, b = np.ones((m, k), dtype=dtype), np.ones((k, n), dtype=dtype)
        seconds = _median_s(lambda s=sess, a=a, b=b: s.run(None, {"a": a, "b": b}), 50)
        rows.append({"engine": "onnxruntime MatMul", "dtype": name, "gflops": round(2 * m * k * n / seconds / 1e9, 1)})
    import torch

    torch.set_num_threads(1)
    ta, tb = torch.randn(m, k), torch.randn(k, n)
    seconds = _median_s(lambda: ta @ tb, 50)
    rows.append({"engine": "torch matmul", "dtype": "fp32", "gflops": round(2 * m * k * n / seconds / 1e9, 1)})
    return rows


def bandwidth() -> dict[str, float]:
    import torch

    x = torch.ones(128 << 20, dtype=torch.float32)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"{threads}t_gb_per_s"] = round(x.numel() * 4 / _median_s(x.sum, 5) / 1e9, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()
    result = {"nbits_m1": nbits_rates(), "gemm_m64": gemm_rates(), "bandwidth": bandwidth()}
    print("MatMulNBits, M=1, accuracy_level 4, 1 thread (G weights/s: 4 KiB pages, huge pages)")
    for r in result["nbits_m1"]:
        print(f"  {r['shape']:<18} {r['bits']}-bit block {r['block']:<4} zero points {r['zero_points']:<5} "
              f"{r['gweights_per_s_4k']:>6} {r['gweights_per_s_huge']:>6}")
    print("GEMM 64x576x3072, 1 thread (GFLOP/s)")
    for r in result["gemm_m64"]:
        print(f"  {r['engine']:<20} {r['dtype']:<5} {r['gflops'] if r['gflops'] is not None else 'refused: ' + r['refused']}")
    print("read bandwidth (GB/s):", result["bandwidth"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

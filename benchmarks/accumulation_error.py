"""Swamping in low-precision accumulation, and the error of fp16-accumulated dot products of length
2^k with and without chunk-based accumulation (Wang et al. 2018, Fig. 2), as a PNG plot.

    nice python benchmarks/accumulation_error.py [--out runs/accumulation_error.png] [--max-log2 14]

Vectors: 32 pairs of uniform [0, 1) fp16 vectors per length (positive terms: the sum grows, so each
new addend is ever smaller against it - the case where swamping bites). Relative error against the
float64 sum of the same fp16 numbers; products are exact (an FMA), every addition is rounded.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/accumulation_error.png")
    ap.add_argument("--max-log2", type=int, default=14)
    ap.add_argument("--rows", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from effdnn.formats import float_bits
    from effdnn.formats.float import FP16, FP16_169
    from effdnn.lowp.accumulate import lowp_matmul, lowp_sum

    float_bits.set_compile(False)  # small tensors, long loops: eager kernels (no compile time)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, 1 thread")

    terms = torch.cat([torch.ones(1), torch.full((4096,), 1e-4)])
    exact = 1.0 + 4096 * FP16.round(torch.tensor(1e-4)).item()
    print("\nswamping: 1.0 + 4096 x 1e-4 (exact 1.4097)")
    print("| accumulation | sum | relative error |\n|---|---|---|")
    for label, fmt, chunk in [("fp16 sequential", FP16, None), ("fp16 chunks of 64", FP16, 64),
                              ("fp16 (1,6,9) sequential", FP16_169, None), ("fp16 (1,6,9) chunks of 64", FP16_169, 64)]:
        s = lowp_sum(terms, fmt, chunk).item()
        print(f"| {label} | {s:.5f} | {abs(s - exact) / exact:.2e} |")

    gen = torch.Generator().manual_seed(0)
    lengths = [2**k for k in range(4, args.max_log2 + 1)]
    curves: dict[str, list[float]] = {"fp16 sequential": [], "fp16 chunks CL=64": [], "fp32 (torch)": []}
    for n in lengths:
        a = FP16.round(torch.rand(args.rows, n, generator=gen))
        b = FP16.round(torch.rand(n, 1, generator=gen))
        ref = (a.double() @ b.double()).squeeze(1)
        for name, val in [("fp16 sequential", lowp_matmul(a, b, FP16, None, None)),
                          ("fp16 chunks CL=64", lowp_matmul(a, b, FP16, None, 64)),
                          ("fp32 (torch)", a @ b)]:
            curves[name].append(float(((val.squeeze(1).double() - ref).abs() / ref).mean()))
    print("\ndot products of length n, fp16 inputs: mean relative error")
    print("| n | " + " | ".join(curves) + " |\n|---|" + "---|" * len(curves))
    for i, n in enumerate(lengths):
        print(f"| {n} | " + " | ".join(f"{curves[k][i]:.2e}" for k in curves) + " |")

    u = 2.0**-11
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ax.loglog(lengths, [max(y, 1e-9) for y in ys], marker="o", label=name)
    ax.loglog(lengths, [n * u / 2 for n in lengths], "k:", label="n u / 2")
    ax.set_xlabel("dot-product length n")
    ax.set_ylabel("mean relative error")
    ax.set_title("fp16 accumulation: sequential vs chunk-based (CL = 64)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()

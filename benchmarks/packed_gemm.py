"""Packed binary GEMM (XNOR + popcount on 64-bit words: the compiled kernels of ``effdnn.quant.kernels``
and numpy's native bitwise_count, the reference) against an fp32 GEMM (torch.matmul, MKL / OpenBLAS) of
the same shape, on CPU, at 1 and 2 threads (torch's thread count; the kernels use the same count).

    python benchmarks/packed_gemm.py [--repeat 5] [--threads 1 2]

Y (M, N) = X (M, K) @ W (N, K)^T with X, W in {-1, +1}. Weights are packed once (deployment); the time
of the binary GEMM includes packing the activations (sign -> bits) unless stated. Each kernel result is
checked equal to the fp32 product first. At 2 threads on a shared machine, OpenMP / MKL barriers wait for
descheduled threads: read the load average printed with the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's effdnn

import numpy as np
import torch

from effdnn.quant import kernels
from effdnn.quant.bitpack import pack_words, xnor_popcount_matmul
from effdnn.quant.kernels.ops import pack_rows, weight_panels, xnor_gemm

SHAPES = [(64, 2304, 256), (256, 4096, 1024), (1024, 1024, 1024), (4096, 576, 64)]


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def row(m: int, k: int, n: int, repeat: int, numpy_ref: bool) -> str:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    xs, ws = torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0)
    w_words = pack_words((ws > 0).numpy())
    panels = weight_panels(w_words)
    ref = (xs @ ws.T).to(torch.int32)
    assert torch.equal(xnor_gemm(pack_rows(x)[0], panels, n, k), ref), "kernel GEMM differs from the fp32 one"
    t_fp = best(lambda: xs @ ws.T, repeat)
    t_k = best(lambda: xnor_gemm(pack_rows(x)[0], panels, n, k), repeat)
    xw = pack_rows(x)[0]
    t_kp = best(lambda: xnor_gemm(xw, panels, n, k), repeat)
    t_np = best(lambda: xnor_popcount_matmul(pack_words((x >= 0).numpy()), w_words, k), 1) if numpy_ref else float("nan")
    return (f"| {m} x {k} x {n} | {torch.get_num_threads()} | {t_fp * 1e3:.2f} | {t_k * 1e3:.2f} | {t_kp * 1e3:.2f} | "
            f"**{t_fp / t_k:.2f}x** | {t_np * 1e3:.1f} | {t_fp / t_np:.2f}x | {n * k * 4} / {w_words.nbytes} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    print(f"command: python benchmarks/packed_gemm.py {' '.join(sys.argv[1:])}")
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}, binary kernels: {kernels.isa()}, load average {load:.1f} at start")
    if kernels.lib() is None:
        sys.exit("the compiled kernels are unavailable: nothing to compare")
    print("\n| M x K x N | threads | fp32 GEMM ms | XNOR kernel ms (incl. act packing) | kernel popcount only ms | "
          "kernel vs fp32 | numpy reference ms | numpy vs fp32 | weight bytes fp32 / packed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in a.threads:
        torch.set_num_threads(t)
        for m, k, n in SHAPES:
            print(row(m, k, n, a.repeat, numpy_ref=t == a.threads[0]), flush=True)


if __name__ == "__main__":
    main()

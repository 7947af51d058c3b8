"""Packed binary GEMM (XNOR + popcount on 64-bit words, numpy's native bitwise_count) against an fp32
GEMM (torch.matmul, MKL / OpenBLAS) of the same shape, on CPU.

    python benchmarks/packed_gemm.py [--repeat 5]

Y (M, N) = X (M, K) @ W (N, K)^T with X, W in {-1, +1}. Weights are packed once (deployment); the time
of the binary GEMM includes packing the activations (sign -> bits) unless stated. The sign-add GEMM
(binary weights, real inputs, as BWN / TWN deploy) is two {0, 1}-matrix fp32 products.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's effdnn

import numpy as np  # noqa: E402
import torch  # noqa: E402

from effdnn.quant.bitpack import pack_words, xnor_popcount_matmul  # noqa: E402

SHAPES = [(64, 2304, 256), (256, 4096, 1024), (1024, 1024, 1024), (4096, 576, 64)]


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")
    print("\n| M x K x N | fp32 GEMM ms | XNOR-popcount ms (incl. act packing) | popcount only ms | speed vs fp32 | "
          "sign-add ms | weight bytes fp32 / packed |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for m, k, n in SHAPES:
        x = torch.randn(m, k, generator=g)
        w = torch.randn(n, k, generator=g)
        xs, ws = torch.sign(x) + (x == 0), torch.sign(w) + (w == 0)
        w_words = pack_words((ws > 0).numpy())
        pos, neg = (ws > 0).float(), (ws < 0).float()
        ref = xs @ ws.T
        got = xnor_popcount_matmul(pack_words((x >= 0).numpy()), w_words, k)
        assert np.array_equal(got, ref.numpy().astype(np.int32)), "packed GEMM differs from the fp32 one"
        t_fp = best(lambda: xs @ ws.T, a.repeat)
        t_bin = best(lambda: xnor_popcount_matmul(pack_words((x >= 0).numpy()), w_words, k), a.repeat)
        xw = pack_words((x >= 0).numpy())
        t_pop = best(lambda: xnor_popcount_matmul(xw, w_words, k), a.repeat)
        t_sa = best(lambda: x @ pos.T - x @ neg.T, a.repeat)
        print(f"| {m} x {k} x {n} | {t_fp * 1e3:.2f} | {t_bin * 1e3:.2f} | {t_pop * 1e3:.2f} | {t_fp / t_bin:.2f}x | "
              f"{t_sa * 1e3:.2f} | {n * k * 4} / {w_words.nbytes} |")


if __name__ == "__main__":
    main()

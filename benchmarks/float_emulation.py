"""Speed of float-format emulation on one 10M-element float32 tensor, side by side, same threads:
effdnn's FloatFormat (bit manipulation, torch.compile'd; ``round`` returns the float32 carrier, ``encode``
the 1-byte codes) vs qtorch's float_quantize vs torch's own cast.

    nice python benchmarks/float_emulation.py [--threads 1] [--repeats 15]

Variants are interleaved (one call of each per round, median over rounds) so that load drift on a
shared machine hits them alike. The torch.compile time of effdnn's kernels (first call) is reported apart.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--numel", type=int, default=10_000_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from effdnn.formats.float import FP8_E5M2

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    torch.manual_seed(0)
    x = torch.randn(args.numel)
    variants = {
        "effdnn e5m2 stochastic": lambda: FP8_E5M2.round(x, rounding="stochastic"),
        "effdnn e5m2 nearest": lambda: FP8_E5M2.round(x),
        "effdnn e5m2 encode nearest (1-byte codes)": lambda: FP8_E5M2.encode(x),
        "effdnn e5m2 encode stochastic (1-byte codes)": lambda: FP8_E5M2.encode(x, rounding="stochastic"),
        "torch x.to(float8_e5m2)": lambda: x.to(torch.float8_e5m2),
        "torch x.to(float8_e5m2).float()": lambda: x.to(torch.float8_e5m2).float(),
    }
    try:
        from qtorch.quant import float_quantize

        t0 = time.perf_counter()
        float_quantize(x[:10], exp=5, man=2, rounding="nearest")
        print(f"qtorch import + extension build/load: {time.perf_counter() - t0:.1f} s")
        variants["qtorch float_quantize e5m2 stochastic"] = lambda: float_quantize(x, exp=5, man=2, rounding="stochastic")
        variants["qtorch float_quantize e5m2 nearest"] = lambda: float_quantize(x, exp=5, man=2, rounding="nearest")
    except Exception as err:  # qtorch missing or its C++ extension does not build
        print(f"qtorch unavailable: {type(err).__name__}: {err}")
    for name, fn in variants.items():  # warm-up; effdnn's first calls compile the kernels
        t0 = time.perf_counter()
        fn()
        if name.startswith("effdnn"):
            print(f"{name}: first call (torch.compile) {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ours_sr, ours_rn, cast = med["effdnn e5m2 stochastic"], med["effdnn e5m2 nearest"], med["torch x.to(float8_e5m2)"]
    print("\n| variant | median ms | vs effdnn (same kind) |\n|---|---|---|")
    for k, v in med.items():
        ref = ours_sr if "stochastic" in k else ours_rn
        print(f"| {k} | {v:.1f} | {v / ref:.2f}x |")
    exact = torch.equal(FP8_E5M2.round(x), x.to(torch.float8_e5m2).float())
    exact_codes = torch.equal(FP8_E5M2.encode(x), x.to(torch.float8_e5m2).view(torch.uint8))
    sr = FP8_E5M2.round(x, rounding="stochastic")
    print(f"\neffdnn nearest bit-exact with torch's cast: {exact} (codes: {exact_codes}); stochastic mean error {float((sr - x).double().mean()):.2e}"
          f" (mean |x| {float(x.abs().mean()):.2f})")
    if "qtorch float_quantize e5m2 stochastic" in med:
        print(f"qtorch stochastic / effdnn stochastic: {med['qtorch float_quantize e5m2 stochastic'] / ours_sr:.1f}x")
    print(f"effdnn nearest / torch cast: {ours_rn / cast:.2f}x;  vs cast + .float(): "
          f"{ours_rn / med['torch x.to(float8_e5m2).float()']:.2f}x")
    print(f"effdnn encode nearest (1 byte out) / torch cast (1 byte out): "
          f"{med['effdnn e5m2 encode nearest (1-byte codes)'] / cast:.2f}x")


if __name__ == "__main__":
    main()

"""Binary / ternary LeNet-5 on Fashion-MNIST: accuracy against the same run's FP32, storage ratio.

    python benchmarks/binary_fashion.py [recipes/fashion_binary.yaml] [--out runs/fashion-binary] [--only a,b]

Runs the recipe (each method fine-tuned from the shared baseline, then deployed bit-packed) and prints
a markdown table beside the papers' rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's effdnn

import torch  # noqa: E402
import yaml  # noqa: E402

import effdnn  # noqa: E402
import effdnn.techniques  # noqa: E402,F401

TARGETS = {"ttq": 1.0, "twn": 1.5, "bwn": 1.5, "bc": 2.0, "bc-bn": 2.0, "bc-stochastic": 2.0, "xnor": 4.0, "bnn": 6.0}
PAPERS = {
    "twn": "TWN LeNet-5 MNIST 99.35 vs 99.41 (-0.06)",
    "ttq": "TTQ ResNet-20 CIFAR-10 91.13 vs 91.77 (-0.64)",
    "bwn": "BWN AlexNet ImageNet top-1 56.8 vs 56.6 (+0.2)",
    "xnor": "XNOR AlexNet ImageNet top-1 44.2 vs 56.6 (-12.4)",
    "bc": "BC MNIST 98.71 vs 98.30 (PI MLP, +0.41; reg. effect)",
    "bnn": "BNN MNIST 99.04 vs 99.05 (Theano MLP)",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default="recipes/fashion_binary.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true", help="reuse experiments an earlier run in --out finished unchanged")
    ap.add_argument("--only", default=None, help="comma-separated experiment names to run (the rest are left out)")
    a = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    recipe: str | dict = a.recipe
    if a.only:
        recipe = yaml.safe_load(Path(a.recipe).read_text())
        recipe["experiments"] = [e for e in recipe["experiments"] if e["name"] in a.only.split(",")]
    rep = effdnn.run(recipe, out=a.out, resume=a.resume)
    base = rep["baseline"]
    print(f"\nFP32 baseline: {base['accuracy'] * 100:.2f} %, {base['size_bytes'] / 1024:.1f} KiB\n")
    print("| method | accuracy % | vs FP32 (pts) | target | met | size KiB | vs fp32 | bit-ops | energy uJ | packed max abs diff | paper (quantized vs fp) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for e in rep["experiments"]:
        d = e["accuracy_delta"] * 100
        t = TARGETS.get(e["name"], TARGETS.get(e["name"].split("-")[0]))  # xnor-kd: XNOR-Net's target
        met = "yes" if t is not None and -round(d, 2) <= t else "no"  # 0.01 pts = 1 of 10,000 images: no float noise
        print(f"| {e['name']} | {e['accuracy'] * 100:.2f} | {d:+.2f} | {t} | {met} | {e['size_bytes'] / 1024:.1f} | "
              f"{e['compression_ratio']:.1f}x | {e['bitops']:.3g} | {e['energy_pj'] / 1e6:.3f} | "
              f"{e.get('packed_max_abs_diff', float('nan')):.1e} | {PAPERS.get(e['name'], '')} |")
    print(f"| FP32 | {base['accuracy'] * 100:.2f} | 0 | | | {base['size_bytes'] / 1024:.1f} | 1.0x | {base['bitops']:.3g} | "
          f"{base['energy_pj'] / 1e6:.3f} | | |")


if __name__ == "__main__":
    main()

"""Fashion-MNIST LeNet-5 trained from scratch in fp32, bf16, fp16 (loss scaling), FP8 (chunked
accumulation + stochastic rounding) and its ablations, through recipes/fashion_lowp.yaml.

    nice python benchmarks/lowp_training.py [--threads 1] [--recipe recipes/fashion_lowp.yaml] [--out runs/fashion-lowp]

Prints a markdown table: accuracy, points against the fp32 row of the same run, step time as a ratio
to an fp32 step measured in the same experiment, loss-scale overflows / final scale, error underflow.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's effdnn, run from anywhere


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipe", default="recipes/fashion_lowp.yaml")
    ap.add_argument("--out", default="runs/fashion-lowp")
    ap.add_argument("--resume", action="store_true", help="reuse the experiments an interrupted run finished")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import effdnn

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    t0 = time.time()
    rep = effdnn.run(args.recipe, out=args.out, resume=args.resume)
    rows = rep["experiments"]
    ref = next((r["accuracy"] for r in rows if r["name"] == "fp32"), rep["baseline"]["accuracy"])
    print(f"\nrecipe baseline (15 epochs fp32, cached): accuracy {rep['baseline']['accuracy']:.4f}\n")
    print("| variant | accuracy | vs fp32 (pts) | step time vs fp32 | overflows (skipped) | final loss scale | error underflow | weights unchanged/step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        uf = r.get("grad_underflow_frac")
        wu = r.get("weight_unchanged_frac")
        print(f"| {r['name']} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - ref):+.2f} | "
              f"{r.get('step_time_ratio_fp32', float('nan')):.1f}x | {r.get('loss_scale_overflows', '-')} | "
              f"{r.get('loss_scale_final', '-')} | {'-' if uf is None else f'{uf:.2%}'} | "
              f"{'-' if wu is None else f'{wu:.1%}'} |")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

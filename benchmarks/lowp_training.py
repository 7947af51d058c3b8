"""Fashion-MNIST LeNet-5 trained from scratch in fp32, bf16, fp16 (loss scaling), FP8 (chunked
accumulation + stochastic rounding) and its ablations, through recipes/fashion_lowp.yaml.

    nice python benchmarks/lowp_training.py [--threads 1] [--recipe recipes/fashion_lowp.yaml] [--out runs/fashion-lowp]
                                            [--seeds 0 1 2]

Prints a markdown table: accuracy, points against the fp32 row of the same run, step time as a ratio
to an fp32 step measured in the same experiment, loss-scale overflows / final scale, error underflow.
``--seeds``: the whole recipe once per seed (into OUT-seedN; weights, shuffling and stochastic rounding
all follow the seed), then a table of each variant's accuracy per seed, its mean, and its difference to
the fp32 row of the same seed (mean +- sample std over the seeds): one seed's gap is not a property of
the precision when two fp32 runs of one seed already differ by a few tenths.
"""
from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--only", nargs="*", help="run only these experiments (into OUT-NAME; parallel processes)")
    ap.add_argument("--table", nargs="*", help="print one table from these report.json files instead of running")
    ap.add_argument("--seeds", nargs="*", type=int, help="run the recipe once per seed and compare over the seeds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import effdnn

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    t0 = time.time()
    if args.seeds:
        seed_table(effdnn, args)
        print(f"\ntotal {time.time() - t0:.0f} s")
        return
    if args.table is not None:
        reports = [json.loads(Path(p).read_text()) for p in args.table]
        rows = [r for rep in reports for r in rep["experiments"]]
        rep = reports[0]
    elif args.only:
        from effdnn.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        recipe = recipe.model_copy(update={"experiments": [e for e in recipe.experiments if e.name in args.only]})
        rep = effdnn.run(recipe, out=f"{args.out}-{'-'.join(args.only)}", resume=args.resume)
        rows = rep["experiments"]
    else:
        rep = effdnn.run(args.recipe, out=args.out, resume=args.resume)
        rows = rep["experiments"]
    ref = next((r["accuracy"] for r in rows if r["name"] == "fp32"), rep["baseline"]["accuracy"])
    print(f"\nrecipe baseline (the runner's reference model): accuracy {rep['baseline']['accuracy']:.4f}\n")
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


def seed_table(effdnn, args: argparse.Namespace) -> None:
    """Each seed's run (resumable), then per variant: accuracy per seed, mean, and paired gap to fp32."""
    import statistics

    from effdnn.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    acc: dict[str, dict[int, float]] = {}
    for seed in args.seeds:
        rep = effdnn.run(recipe.model_copy(update={"seed": seed}), out=f"{args.out}-seed{seed}", resume=True)
        for r in rep["experiments"]:
            acc.setdefault(r["name"], {})[seed] = r["accuracy"]
    if "fp32" not in acc:
        raise SystemExit("--seeds needs an experiment named fp32 in the recipe")
    seeds = args.seeds
    print(f"\n| variant | {' | '.join(f'seed {s}' for s in seeds)} | mean | vs fp32 of the same seed (pts, mean +- std) |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for name, by_seed in acc.items():
        gaps = [100 * (by_seed[s] - acc["fp32"][s]) for s in seeds]
        spread = f" +- {statistics.stdev(gaps):.2f}" if len(gaps) > 1 else ""
        print(f"| {name} | {' | '.join(f'{by_seed[s]:.4f}' for s in seeds)} | {statistics.mean(by_seed.values()):.4f} | "
              f"{'' if name == 'fp32' else f'{statistics.mean(gaps):+.2f}{spread}'} |")


if __name__ == "__main__":
    main()

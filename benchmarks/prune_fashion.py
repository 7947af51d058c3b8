"""Pruning / activation sparsity / Deep Compression figures for BENCHMARKS.md.

    python benchmarks/prune_fashion.py [recipes/fashion_prune.yaml] [--out DIR] [--report DIR/report.json]

Runs the recipe through effdnn's public API (or reads an existing report.json) and prints one table:
every experiment against the FP32 baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def table(report: dict) -> str:
    base = report["baseline"]
    lines = ["| experiment | accuracy | Δ pts | size KiB | compression | weight sparsity | act. sparsity | MACs | effective MACs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in [base, *report["experiments"]]:
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {(r['accuracy'] - base['accuracy']) * 100:+.2f} | "
                     f"{r['size_bytes'] / 1024:.2f} | {r['compression_ratio']:.1f}x | {r['weight_sparsity']:.3f} | "
                     f"{r['activation_sparsity']:.3f} | {r['macs']:,} | {r['effective_macs']:,.0f} |")
    return "\n".join(lines)


def activation_rows(report: dict) -> str:
    out = []
    for r in report["experiments"]:
        after = r.get("activation_sparsity_per_layer")
        before = r.get("activation_sparsity_before")
        if after and before:
            zb = sum(before.values()) / len(before)
            za = sum(after.values()) / len(after)
            out.append(f"{r['name']}: zero activations (mean over ReLU outputs) {zb:.3f} -> {za:.3f} "
                       f"({za / zb:.2f}x zeros, density {1 - zb:.3f} -> {1 - za:.3f}); per layer "
                       + ", ".join(f"{k} {before[k]:.2f}->{after[k]:.2f}" for k in after))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default="recipes/fashion_prune.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None, nargs="+", help="print the tables of existing report.json files (merged)")
    ap.add_argument("--only", default=None, help="comma-separated experiment names to run (the rest are left out)")
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoints an interrupted run left in --out")
    args = ap.parse_args()
    print("command: python benchmarks/prune_fashion.py " + " ".join(sys.argv[1:]))
    if args.report:
        reports = [json.load(open(p)) for p in args.report]
        merged: dict[str, dict] = {}  # a later report's experiment replaces an earlier one of the same name
        for r in reports:
            merged.update({e["name"]: e for e in r["experiments"]})
        report = {**reports[0], "experiments": list(merged.values())}
    else:
        import effdnn
        import yaml

        with open(args.recipe) as f:
            recipe = yaml.safe_load(f)
        if args.only:
            names = args.only.split(",")
            recipe["experiments"] = [e for e in recipe["experiments"] if e["name"] in names]
        report = effdnn.run(recipe, out=args.out or recipe.get("output"), resume=args.resume)
    env = report["environment"]
    print(f"machine: {env['platform']}, {env['cpu_count']} cores, torch {env['torch']}, {env['threads']} threads")
    print(table(report))
    print(activation_rows(report))
    for r in report["experiments"]:
        if "container" in r:
            c = r["container"]
            print(f"{r['name']}: file {c['path']} = {c['bytes']} bytes; "
                  + ", ".join(f"{k}: {v['bytes']} B for {v['nonzeros']}/{v['numel']} ({v['shared_values']} values)"
                              for k, v in c["layers"].items()) + f"; overhead {c['overhead_bytes']:.0f} B")
        if "structured" in r:
            print(f"{r['name']}: channels " + ", ".join(f"{'+'.join(g['producers'][:2])}{'...' if len(g['producers']) > 2 else ''} "
                                                        f"{g['channels']}->{g['kept']}" for g in r["structured"]["groups"]))


if __name__ == "__main__":
    main()

"""Binary / ternary / low-bit QAT on a depthwise-separable net: the depthwise precision policy and the
per-channel scales, before / after, against the same run's FP32.

    nice python benchmarks/depthwise_digits.py [--out runs/digits-depthwise] [--only pact,bwn] [--epochs 4]

The net is a user's own model (``recipes/digits_dwsep_model.py``: MobileNet-v1 blocks, 3x3 depthwise
then 1x1 pointwise, on scikit-learn's 8 x 8 digits). Every method is fine-tuned from the shared FP32
baseline for ``--epochs`` epochs in four variants:

- ``before``: depthwise layers quantized as the others (``depthwise: binarize`` / ``quantize``), the
  method's per-tensor scale where it has one (BWN / XNOR-Net: alpha per filter, eq. 4, as before);
- ``per-channel``: per-channel scales only (TWN, TTQ, PACT / DoReFa weights);
- ``policy``: the method's defaults (depthwise layers at int8);
- ``policy + per-channel``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's effdnn

import torch  # noqa: E402

import effdnn  # noqa: E402
import effdnn.techniques  # noqa: E402,F401

LOW_BIT = {"weight": {"format": "int", "bits": 4}, "act": {"format": "int", "bits": 4}}
BINARY = ["bc", "bnn", "bwn", "xnor", "twn", "ttq"]
QAT = ["pact", "lsq", "dorefa"]
PER_CHANNEL = {"twn", "ttq", "pact", "dorefa", "lsq"}  # where granularity changes the weights' scales


def variants(method: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, quantize block) of the method's before / after rows."""
    binary = method in BINARY
    off = {"depthwise": "binarize" if binary else "quantize"}
    if binary:
        pt, pc = {"granularity": "per_tensor"}, {"granularity": "per_channel"}
        if method in ("bc", "bnn"):  # no scale to choose: one H per layer
            pt, pc = {}, None
        if method in ("bwn", "xnor"):  # alpha was already per filter (eq. 4)
            pt, pc = {"granularity": "per_channel"}, None
    else:
        pt = {"weight": {**LOW_BIT["weight"], "granularity": "per_tensor"}, "act": LOW_BIT["act"]}
        pc = {"weight": {**LOW_BIT["weight"], "granularity": "per_channel"}, "act": LOW_BIT["act"]}
    rows = [("before", {**pt, **off})]
    if pc is not None:
        rows.append(("per-channel", {**pc, **off}))
    rows.append(("policy", dict(pt)))
    if pc is not None:
        rows.append(("policy + per-channel", dict(pc)))
    return [(f"{method} {n}", {"method": method, **q}) for n, q in rows]


def recipe(methods: list[str], epochs: int) -> dict[str, Any]:
    exps = [{"name": name.replace(" + ", "+").replace(" ", "-"), "quantize": q,
             "finetune": {"epochs": epochs, "optimizer": "adam", "lr": 0.001}}
            for m in methods for name, q in variants(m)]
    return {"name": "digits-depthwise", "seed": 0, "data": {"name": "digits", "batch_size": 64},
            "model": {"name": str(ROOT / "recipes" / "digits_dwsep_model.py") + ":net"},
            "baseline": {"epochs": 30, "optimizer": "adam", "lr": 0.003, "schedule": "cosine"},
            "experiments": exps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated methods (default: all)")
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    print(f"command: python benchmarks/depthwise_digits.py {' '.join(sys.argv[1:])}")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    methods = a.only.split(",") if a.only else QAT + BINARY
    rep = effdnn.run(recipe(methods, a.epochs), out=a.out)
    base = rep["baseline"]
    print(f"\nFP32 baseline: {base['accuracy']:.4f}, {base['size_bytes'] / 1024:.1f} KiB\n")
    print("| method | variant | accuracy | vs FP32 (pts) | size KiB | vs fp32 | layers the policy kept at int8 |")
    print("|---|---|---|---|---|---|---|")
    for e in rep["experiments"]:
        method, variant = e["name"].split("-", 1)
        touched = (e.get("depthwise_policy") or {}).get("layers", [])
        print(f"| {method} | {variant.replace('+', ' + ').replace('-', ' ')} | {e['accuracy']:.4f} | "
              f"{e['accuracy_delta'] * 100:+.1f} | {e['size_bytes'] / 1024:.1f} | {e['compression_ratio']:.1f}x | "
              f"{', '.join(touched) or '-'} |")


if __name__ == "__main__":
    main()

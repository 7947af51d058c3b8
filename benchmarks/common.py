"""Shared by the PTQ benchmarks: the recipe's trained baseline, its calibration images, the test set."""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effdnn.data import load_data  # noqa: E402
from effdnn.recipe import load_recipe  # noqa: E402
from effdnn.runner import Runner  # noqa: E402

RECIPES = {"lenet5": ROOT / "recipes" / "fashion_ptq.yaml", "resnet20": ROOT / "recipes" / "fashion_resnet20_ptq.yaml",
           "mobilenetv2": ROOT / "recipes" / "fashion_mobilenetv2_ptq.yaml"}


def ptq_args(script: str, threads: int, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The PTQ benchmarks' shared command line (--model, --threads, --test-images, --only, + ``extra``);
    also quiets warnings / logging, sets the torch threads and prints the command."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(RECIPES), default="lenet5")
    ap.add_argument("--threads", type=int, default=threads)
    if extra:
        extra(ap)
    ap.add_argument("--test-images", type=int, default=None, help="first N test images only (default: all)")
    ap.add_argument("--only", nargs="*", default=None, help="recipe experiments to run (default: all)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/{script} " + " ".join(sys.argv[1:]))
    return args


def machine() -> str:
    import onnxruntime

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}, load average {load:.1f} at start")


def baseline(model: str, test_images: int | None = None, epochs: int | None = None, max_batches: int | None = None
             ) -> tuple[Any, torch.nn.Module, list[Any], torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(recipe, trained fp32 model, calibration batches (the runner's 16 x 128), test x, test y, baseline row);
    ``test_images``: the first N test images only (slow models on a busy machine); ``epochs`` /
    ``max_batches``: a shorter baseline than the recipe's (latency benchmarks on a busy machine)."""
    recipe = load_recipe(RECIPES[model])
    if epochs is not None or max_batches is not None:
        update = {k: v for k, v in (("epochs", epochs), ("max_batches", max_batches)) if v is not None}
        recipe = recipe.model_copy(update={"baseline": recipe.baseline.model_copy(update=update)})
    runner = Runner(recipe, out=Path(tempfile.mkdtemp()) / "run")
    runner.data = load_data(recipe.data.name, root=recipe.data.root, base_dir=recipe.base_dir, **recipe.data.kwargs)
    runner.fp32_size, runner.baseline_accuracy = None, None
    m, row = runner.baseline()  # trains, or reuses the runner's cached baseline
    calib = list(runner.ctx().calib_loader(16))
    test = runner.data.test
    n = min(test_images or len(test), len(test))
    xte = torch.stack([test[i][0] for i in range(n)])
    yte = torch.tensor([int(test[i][1]) for i in range(n)])
    return recipe, m.cpu().eval(), calib, xte, yte, row


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    correct = 0
    for i in range(0, len(x), bs):
        out = torch.as_tensor(fn(x[i:i + bs]))
        correct += int((out.argmax(1) == y[i:i + bs]).sum())
    return correct / len(x)


@torch.inference_mode()
def round_robin(variants: dict[str, Callable], xb: torch.Tensor, rounds: int, per_round: int, warmup: int = 5) -> dict[str, float]:
    """Interleaved timing (every round runs each variant ``per_round`` times); median ms per variant."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        for _ in range(warmup):
            fn(xb)
    for _ in range(rounds):
        for k, fn in variants.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn(xb)
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}

"""Torchvision models under the emulated precisions: build, convert as the ``precision`` block does, one
training step (shared by tests/lowp/test_zoo_emulation.py and benchmarks/lowp_zoo.py)."""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effdnn.hooks import Callback, step_with_callbacks
from effdnn.lowp.gemm import CLASSES, LowpStats
from effdnn.lowp.policy import LowpMixin
from effdnn.lowp.precision_block import PREPARE, BF16Config, FP16Config, FP8Config, HFP8Config

MODES = {"fp16": FP16Config, "bf16": BF16Config, "fp8": FP8Config, "hfp8": HFP8Config}
SIZES = (32, 48, 64, 75, 96, 128, 160, 224, 299)


def gemm_count(model: nn.Module) -> int:
    """Linear / convolution / attention layers a conversion should reach."""
    return sum(type(m) in CLASSES for m in model.modules())


def convert(model: nn.Module, mode: str, **config: Any) -> list[Callback]:
    """Convert ``model`` in place for ``mode`` (emulated, on the CPU) and return its training callbacks;
    ``config``: more fields of the precision block (e.g. ``accumulate="fp32"``)."""
    config = MODES[mode](backend="emulate", **config)
    return PREPARE[mode](config, model, torch.device("cpu"), LowpStats())


def converted(model: nn.Module) -> list[tuple[str, LowpMixin]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowpMixin)]


def _loss(out: Any, y: torch.Tensor) -> torch.Tensor:
    outs = out if isinstance(out, tuple) else (out,)  # googlenet / inception: main and auxiliary logits
    return sum(F.cross_entropy(o, y) for o in outs if isinstance(o, torch.Tensor))  # type: ignore[return-value]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               callbacks: list[Callback]) -> float:
    """Forward, backward and update through the callbacks (loss scaling, weight rounding); the loss."""
    loss = _loss(model(x), y)
    step_with_callbacks(loss, model, opt, callbacks)
    return float(loss.detach())


def _batch(size: int, batch: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen)


def _start(model: nn.Module, callbacks: list[Callback]) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for cb in callbacks:
        cb.on_fit_start(model, opt)
    model.train()
    return opt


def one_step(model: nn.Module, callbacks: list[Callback], size: int, batch: int = 2, classes: int = 10,
             seed: int = 0) -> float:
    """One training step (SGD) on a random batch; the loss."""
    opt = _start(model, callbacks)
    return train_step(model, opt, *_batch(size, batch, classes, seed), callbacks)


def smallest_input(model: nn.Module, batch: int = 2) -> int:
    """The smallest of SIZES a model runs in training mode (shape check on the meta device)."""
    meta = copy.deepcopy(model).to("meta").train()
    for s in SIZES:
        try:
            meta(torch.empty(batch, 3, s, s, device="meta"))
            return s
        except Exception:  # noqa: BLE001 - too small for some layer; try the next size
            continue
    raise RuntimeError(f"no input size in {SIZES} fits")


def step_seconds(model: nn.Module, callbacks: list[Callback], size: int, steps: int = 3, warmup: int = 2) -> float:
    """Median seconds per training step after ``warmup`` steps (the rounding kernels' compiles)."""
    opt = _start(model, callbacks)
    times = []
    for i in range(warmup + steps):
        x, y = _batch(size, 2, 10, i)
        t0 = time.perf_counter()
        train_step(model, opt, x, y, callbacks)
        times.append(time.perf_counter() - t0)
    times = times[warmup:]
    return sorted(times)[len(times) // 2]

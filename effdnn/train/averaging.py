"""Stochastic Weight Averaging inside ``fit`` (Izmailov et al. 2018, Algorithm 1; ``TrainSpec.swa``).

The running average of the parameters, w_swa <- w_swa + (w - w_swa) / (n + 1) (equal weights, as
Algorithm 1), is kept here as plain tensors: buffers (BatchNorm statistics, pruning masks) are not
averaged, and a technique may add buffers during the run. BatchNorm statistics are recomputed for the
averaged weights at the end, on training batches, as the paper prescribes.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..utils.batchnorm import recalibrate_batchnorm, running_batchnorms
from ..utils import distributed as ddp
from ..train_spec import TrainSpec


class WeightAverager:
    """Collects the weights of the averaging phase and hands the average to the model at the end."""

    def __init__(self, spec: TrainSpec, steps_per_epoch: int) -> None:
        assert spec.swa is not None
        self.swa = spec.swa
        self.first_step = spec.schedule_epochs * steps_per_epoch  # the phase's first optimizer step
        self.count = 0
        self.average: list[torch.Tensor] = []

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        """``step``: optimizer steps taken so far in the run (1 after the first)."""
        done = step - self.first_step
        if done <= 0 or done % self.swa.every:
            return
        params = [p.detach() for p in model.parameters()]
        if not self.average:
            self.average = [p.clone() for p in params]
        else:
            for avg, p in zip(self.average, params, strict=True):
                avg.add_(p - avg, alpha=1 / (self.count + 1))
        self.count += 1

    def finish(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """Load the average into ``model`` and re-estimate its BatchNorm statistics on ``batches``
        (averaged over the processes under DDP). No-op when no step was averaged."""
        if self.count == 0:
            return
        with torch.no_grad():
            for p, avg in zip(model.parameters(), self.average, strict=True):
                p.copy_(avg)
        if recalibrate_batchnorm(model, batches, self.swa.bn_batches):
            for bn in running_batchnorms(model):
                ddp.all_reduce_(bn.running_mean, "mean")
                ddp.all_reduce_(bn.running_var, "mean")

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.average = int(state.get("count", 0)), list(state.get("average") or [])

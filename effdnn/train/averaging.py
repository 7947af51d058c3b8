"""Stochastic Weight Averaging inside ``fit`` (Izmailov et al. 2018, Algorithm 1; ``TrainSpec.swa``).

The running average lives in a ``torch.optim.swa_utils.AveragedModel`` (equal weights, eq. in
Algorithm 1: w_swa <- (n w_swa + w) / (n + 1)). Only parameters are averaged; BatchNorm statistics are
recomputed for the averaged weights at the end, on training batches, as the paper prescribes.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..utils.batchnorm import BATCH_NORMS, recalibrate_batchnorm
from . import distributed as ddp
from .config import TrainSpec


class WeightAverager:
    """Collects the weights of the averaging phase and hands the average to the model at the end."""

    def __init__(self, model: nn.Module, spec: TrainSpec, steps_per_epoch: int) -> None:
        assert spec.swa is not None
        self.swa = spec.swa
        self.first_step = spec.schedule_epochs * steps_per_epoch  # the phase's first optimizer step
        self.average = AveragedModel(model, use_buffers=False)

    @property
    def count(self) -> int:
        return int(self.average.n_averaged)

    def after_step(self, model: nn.Module, step: int) -> None:
        """``step``: optimizer steps taken so far in the run (1 after the first)."""
        done = step - self.first_step
        if done > 0 and done % self.swa.every == 0:
            self.average.update_parameters(model)

    def finish(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """Load the average into ``model`` and re-estimate its BatchNorm statistics on ``batches``
        (averaged over the processes under DDP). No-op when no step was averaged."""
        if self.count == 0:
            return
        with torch.no_grad():
            for p, avg in zip(model.parameters(), self.average.module.parameters()):
                p.copy_(avg)
        if recalibrate_batchnorm(model, batches, self.swa.bn_batches):
            for bn in (m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats):
                ddp.all_reduce_(bn.running_mean, "mean")
                ddp.all_reduce_(bn.running_var, "mean")

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)

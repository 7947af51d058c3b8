"""BatchNorm statistics re-estimated on data: after surgery or binarisation the stored running means and
variances describe a network that no longer exists."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..errors import EffdnnError
from .batches import forward, iter_inputs, model_device

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def running_batchnorms(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm of ``model`` that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], limit: int | None,
                          norms: list[nn.Module] | None = None) -> int:
    """Set the running mean / variance of ``norms`` (default: every BatchNorm with running statistics) to
    their cumulative averages over the first ``limit`` batches (all when None), the rest of the model in eval mode: the
    adaptive BatchNorm of EagleEye (Li et al. 2020, "EagleEye: fast sub-net evaluation for efficient neural
    network pruning"). Weights and affine parameters are not touched; modes and momenta are restored, and
    so are the old statistics when no batch came or a forward pass failed. Returns the batches seen."""
    if norms is None:
        norms = running_batchnorms(model)
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in norms]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs alike
        bn.train()
    seen = 0
    try:
        for x in iter_inputs(batches, limit, model_device(model)):
            forward(model, x)
            seen += 1
        if not seen:
            raise EffdnnError("BatchNorm recalibration: the calibration data has no batch")
    except BaseException:
        for bn, state in zip(norms, saved):
            bn.load_state_dict(state)
        raise
    finally:
        for bn, mom in zip(norms, momenta):
            bn.momentum = mom
        for m, was in modes.items():
            m.train(was)
    return seen

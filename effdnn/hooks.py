"""Hooks through which techniques take part in training without the loop knowing them.

A pruning mask re-applies itself after each step, PACT adds its L2 term to the loss, BatchNorm
statistics freeze at an epoch, a loss scaler takes over backward-and-step. Every method is optional.
It lives below both the training loop (which calls the hooks) and the techniques (which implement
them), so quant / prune / lowp never import the training engine.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Callback:
    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None: ...

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the task loss (a regulariser)."""
        return None

    def backward_step(self, loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool | None:
        """Replace ``loss.backward(); optimizer.step()``; return whether the step was taken.

        Return None to leave the default in place. At most one callback may take over."""
        return None

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def on_fit_end(self, model: nn.Module) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def report(self) -> dict[str, Any]:
        """Extra fields for the experiment's report."""
        return {}


def step_with_callbacks(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                        callbacks: list[Callback]) -> None:
    """One optimizer step on ``loss`` as the callbacks want it: the callback that takes over backward
    and step (a loss scaler) if there is one, else ``loss.backward(); optimizer.step()``; then every
    callback's ``after_step``. (effdnn's own ``fit`` adds gradient clipping, DDP and the schedule.)"""
    optimizer.zero_grad(set_to_none=True)
    takers = [cb for cb in callbacks if type(cb).backward_step is not Callback.backward_step]
    if takers:
        takers[0].backward_step(loss, model, optimizer)
    else:
        loss.backward()
        optimizer.step()
    for cb in callbacks:
        cb.after_step(model, optimizer)

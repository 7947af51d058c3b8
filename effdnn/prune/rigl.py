"""RigL: a sparse network that moves its connections while it trains (``schedule: rigl``).

Evci, Gale, Menick, Castro & Elsen 2020, "Rigging the Lottery: Making All Tickets Winners", Algorithm 1.
The layers start at the final sparsity (the configured saliency picks the first mask, as ``oneshot``).
Then, ``steps`` times, every dT = (t1 - t0) // (steps + 1) steps between ``begin`` (t0) and ``end`` (t1),
each layer:

- drops the k active weights of smallest magnitude (ArgTopK(-|theta|, k)),
- grows the k inactive weights of largest gradient magnitude (ArgTopK(|grad L|, k)), on the dense
  gradient of the current mini-batch (masked weights are exactly zero, so dL/dw exists for them too),
- with k = f(t) * (active weights), and the drop fraction annealed by eq. 1:
  f(t) = alpha / 2 * (1 + cos(pi * (t - t0) / (t1 - t0))).

A grown connection starts at zero, and the optimizer's state for it (momentum, Adam's moments) is
cleared. A weight dropped and grown at the same update keeps its value. Each layer keeps its number of
weights, so the sparsity (global and per layer) never changes. From ``end`` on the mask is frozen.
Under DDP each rank's dense gradient is summed over the ranks before the magnitudes rank the cut
weights, so every rank moves the same connections, as a 1-process run of the same global batch does.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..utils import distributed as ddp
from .sparse import MaskCallback, make_sparse


def rigl_drop_fraction(step: int, t0: int, t1: int, alpha: float) -> float:
    """RigL eq. 1: the fraction of each layer's active weights moved at ``step`` (cosine from alpha to 0)."""
    if step <= t0 or step > t1:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * (step - t0) / (t1 - t0)))


def rigl_update(weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """One layer's new keep-mask: the k smallest-|weight| active entries out, then the k largest-|grad|
    entries that are not kept in (the ones just dropped included). The number of kept entries stays."""
    mask = mask.bool()
    active = int(mask.sum())
    k = min(k, active, mask.numel() - active)
    if k <= 0:
        return mask.clone()
    flat_mask = mask.flatten()
    magnitude = torch.where(flat_mask, weight.detach().abs().flatten().float(), torch.tensor(float("inf")))
    kept = flat_mask.clone()
    kept[torch.topk(magnitude, k, largest=False).indices] = False
    growth = torch.where(kept, torch.tensor(float("-inf")), grad.detach().abs().flatten().float())
    kept[torch.topk(growth, k).indices] = True
    return kept.view_as(mask)


def clear_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every per-element optimizer state of ``param`` (momentum, Adam's moments) at ``where``."""
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where, 0)


class RigL(MaskCallback):
    """Keeps the masks of ``layer_names`` and moves their connections on RigL's schedule (module doc)."""

    def __init__(self, layer_names: list[str], alpha: float, span: tuple[int, int], events: int) -> None:
        super().__init__()
        self.names, self.alpha = layer_names, alpha
        self.t0, self.t1 = span
        self.events = max(events, 1)
        self.every = max((self.t1 - self.t0) // (self.events + 1), 1)  # the last update comes before t1
        self.step = 0
        self.history: list[dict[str, Any]] = []  # per update: step, drop fraction, connections moved
        self.grown = 0  # connections that were not there before their update, over the run
        self._grads: dict[nn.Module, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        """Update j (1 <= j <= events) comes at t0 + j * dT, before t1 (Algorithm 1: t mod dT = 0, t < T_end)."""
        j, r = divmod(step - self.t0, self.every)
        return r == 0 and 1 <= j <= self.events and step < self.t1

    def _masked_grad(self, g: torch.Tensor, m: nn.Module) -> torch.Tensor:
        if self.due(self.step + 1):  # this backward feeds an update: keep the dense gradient
            self._grads[m] = g.detach().clone()  # signed: ranks add gradients, then |.| ranks them
        return super()._masked_grad(g, m)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        if self.due(self.step):
            self.update(model, optimizer)
        super().after_step(model, optimizer)

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        f = rigl_drop_fraction(self.step, self.t0, self.t1, self.alpha)
        mods = dict(model.named_modules())
        moved = 0
        for name in self.names:
            m = mods[name]
            grad = self._grads.pop(m, None)
            if grad is None:  # the layer took no part in this step's loss
                continue
            ddp.all_reduce_(grad)
            old = m.weight_mask
            new = rigl_update(m.weight, old, grad, int(f * int(old.sum())))
            fresh = new & ~old
            with torch.no_grad():
                m.weight.masked_fill_(fresh, 0)  # a grown connection starts at zero
            clear_optimizer_state(optimizer, m.weight, fresh)
            make_sparse(m, new)
            moved += int(fresh.sum())
        self._grads.clear()
        self.grown += moved
        self.history.append({"step": self.step, "fraction": round(f, 6), "moved": moved})

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": self.history, "grown": self.grown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history, self.grown = state["step"], list(state["history"]), state["grown"]

    def report(self) -> dict[str, Any]:
        return {"rigl": {"updates": len(self.history), "grown": self.grown, "every": self.every,
                         "history": self.history}}


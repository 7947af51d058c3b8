"""Mixed-precision training (Micikevicius et al. 2018, "Mixed Precision Training", ICLR): fp16 or bf16
compute with float32 master weights and loss scaling.

Section 3 of the paper: (1) the optimizer keeps and updates a float32 master copy of the weights, the
forward and backward passes use an fp16 copy; (2) the loss is multiplied by a scale S before the
backward pass so that small error gradients survive fp16's range (2^-24 .. 65504), and the weight
gradients are divided by S before the update; (3) products are accumulated in float32.
Dynamic loss scaling (section 3.2 and NVIDIA's "Training with mixed precision" guide): if any gradient
is inf or NaN the step is skipped and S is multiplied by ``backoff`` (0.5); after ``growth_interval``
good steps in a row S is multiplied by ``growth`` (2).

CPU path (reproducible without a GPU): the model's GEMM layers are emulated layers (lowp/gemm.py)
whose weights, activations, errors and outputs are rounded to fp16 / bf16 with float32 accumulation,
and :class:`LossScaleCallback` scales, checks, unscales and steps. Native path (``backend: native``, the
default on a GPU; also on the CPU): the forward pass runs under ``torch.autocast`` (:func:`attach_autocast`)
and :class:`GradScalerCallback` drives ``torch.amp.GradScaler``.
Both take over the training loop's optimizer step through ``Callback.backward_step``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..hooks import Callback
from .gemm import LowpStats


class DynamicLossScaler:
    """The loss scale S and its update rule (skip on inf/NaN and back off, grow after good steps)."""

    def __init__(self, init_scale: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5,
                 growth_interval: int = 2000, dynamic: bool = True) -> None:
        self.scale, self.growth, self.backoff = float(init_scale), growth, backoff
        self.growth_interval, self.dynamic = growth_interval, dynamic
        self.good_steps = 0
        self.overflows = 0  # skipped steps
        self.growths = 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.overflows += 1
            self.good_steps = 0
            if self.dynamic:
                self.scale *= self.backoff
            return
        self.good_steps += 1
        if self.dynamic and self.good_steps % self.growth_interval == 0:
            self.scale *= self.growth
            self.growths += 1

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("scale", "good_steps", "overflows", "growths")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def grads_finite(params: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class LossScaleCallback(Callback):
    """Scaled backward, overflow check, unscale, step (or skip) - the emulated / CPU path."""

    def __init__(self, scaler: DynamicLossScaler, stats: LowpStats | None = None) -> None:
        self.scaler, self.stats = scaler, stats
        self.steps = 0

    def backward_step(self, loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        self.steps += 1
        used = self.scaler.scale
        (loss * used).backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not grads_finite(params):  # overflow: skip the step, back off
            self.scaler.update(False)
            optimizer.zero_grad(set_to_none=True)
            return False
        for p in params:
            if p.grad is not None:
                p.grad.mul_(1.0 / used)  # unscale in float32 (the master gradient)
        optimizer.step()
        self.scaler.update(True)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.steps = state["steps"]

    def report(self) -> dict[str, Any]:
        out = {"loss_scale_final": self.scaler.scale, "loss_scale_overflows": self.scaler.overflows,
               "loss_scale_growths": self.scaler.growths, "optimizer_steps": self.steps,
               "skipped_steps": self.scaler.overflows}
        if self.stats is not None:
            out.update(self.stats.as_dict())
        return out


class GradScalerCallback(Callback):
    """Native path: torch.amp.GradScaler (the same rule, fused kernels; CUDA or CPU); counts skipped steps."""

    def __init__(self, init_scale: float = 2.0**16, growth_interval: int = 2000, enabled: bool = True,
                 device: str = "cuda") -> None:
        self.scaler = torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval, enabled=enabled)
        self.overflows = 0
        self.steps = 0

    def backward_step(self, loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        self.steps += 1
        before = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < before
        self.overflows += int(skipped)
        return not skipped

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "overflows": self.overflows, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.overflows, self.steps = state["overflows"], state["steps"]

    def report(self) -> dict[str, Any]:
        return {"loss_scale_final": self.scaler.get_scale(), "loss_scale_overflows": self.overflows,
                "optimizer_steps": self.steps, "skipped_steps": self.overflows}


def attach_autocast(model: nn.Module, device_type: str, dtype: torch.dtype, handles: list[Any] | None = None) -> nn.Module:
    """Run ``model``'s forward under torch.autocast (hooks on the root module: no wrapper, same state dict).
    ``handles``: a list that receives the two hook handles (``.remove()`` them to run in float32 again)."""
    contexts: list[Any] = []

    def enter(mod: nn.Module, args: Any) -> None:
        ctx = torch.autocast(device_type, dtype=dtype)
        ctx.__enter__()
        contexts.append(ctx)

    def leave(mod: nn.Module, args: Any, out: Any) -> Any:
        contexts.pop().__exit__(None, None, None)
        return out.float() if isinstance(out, torch.Tensor) else out  # the loss in float32

    hooks = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    if handles is not None:
        handles.extend(hooks)
    return model

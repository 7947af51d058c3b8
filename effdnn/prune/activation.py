"""Activation sparsity: more exact zeros in the feature maps, so zero-skipping hardware does less work.

    activation_sparsity: {method: fatrelu, target: 0.8, l1: 0.0, layers: [...]}
    activation_sparsity: {method: l1, weight: 1e-4, layers: [...]}
    activation_sparsity: {method: hoyer, weight: 0.6, extra_zeros: 0.02, layers: [...]}

- FATReLU, the forced-activation-threshold ReLU (Kurtz et al. 2020, "Inducing and exploiting activation
  sparsity for fast inference on deep neural networks", eq. 1): f(x) = x if x > T else 0. Each ReLU
  gets its own T, chosen on calibration data as the ``target`` quantile of its input, so that about
  ``target`` of its outputs are zero (T = 0, a plain ReLU, where the ReLU alone is already sparser).
- An L1 penalty on activations (Georgiadis 2019, "Accelerating convolutional neural networks via
  activation map compression", eq. 2): lambda * sum over layers of mean |a| is added to the training loss
  (Callback.extra_loss), pushing activations to exactly zero through the ReLU.
- The Hoyer-square penalty (Yang, Wen & Li 2020, "DeepHoyer: learning sparser neural network with
  differentiable scale-invariant sparsity measures", eq. 4) on activations: lambda * sum over layers of
  the batch mean of H_S(a) / n = (sum |a|)^2 / (n * sum a^2) per sample (n values). H_S / n lies in
  [1/n, 1] like a density, and is scale-invariant: its gradient pushes the activations below
  sum a^2 / sum |a| towards zero and the larger ones up, so it sparsifies without shrinking the whole
  feature map, which L1 does and the next layer must undo.
- ``extra_zeros`` (both penalties): once fine-tuning is done, every ReLU becomes a FATReLU whose
  threshold zeroes ``extra_zeros`` more of its outputs than it already does (the quantile of its input
  at its own zero fraction + extra_zeros, calibrated layer by layer): the penalty leaves many
  activations just above zero, and these cost little accuracy (Kurtz et al. 2020 pair a regulariser
  with FATReLU thresholds likewise).

The report gets the zero fraction of every activation layer's output on calibration data
(``activation_sparsity_per_layer``); the cost model skips the MACs whose activation input is zero.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..utils.layer_patterns import select
from ..transform import TransformContext
from ..registry import ACTIVATION_SPARSITY, StrictModel
from ..hooks import Callback
from .schedules import agp_sparsity
from ..utils.batches import iter_inputs, forward, model_device

_MAX_SAMPLES = 1 << 20  # values per layer kept for the quantile


class FATReLU(nn.Module):
    """Forced activation threshold ReLU: x where x > threshold, else 0 (gradient 1 where it passes)."""

    effdnn_transform = "activation-sparse"  # what a block that retrains a fresh model would drop
    effdnn_channelwise = True  # structured pruning passes through it

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}"


ACTIVATIONS = (nn.ReLU, FATReLU)


def activation_layers(model: nn.Module, include: list[str] | None, what: str) -> dict[str, nn.Module]:
    acts = {n: m for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)}
    if not acts:
        raise EffdnnError(f"{what}: the model has no ReLU module (a functional relu cannot be replaced)")
    return select(acts, include, (), what, "activation layer")


@torch.no_grad()
def collect(model: nn.Module, layers: dict[str, nn.Module], batches: Any, inputs: bool) -> dict[str, torch.Tensor]:
    """A sample (<= 1M values per layer) of each layer's input (``inputs``) or output on ``batches``."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    gen = torch.Generator().manual_seed(0)

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            t = (inp[0] if inputs else out).detach().reshape(-1).float().cpu()
            if t.numel() > _MAX_SAMPLES // 8:
                t = t[torch.randint(0, t.numel(), (_MAX_SAMPLES // 8,), generator=gen)]
            store[name].append(t)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    try:
        for x in iter_inputs(batches, device=model_device(model)):
            forward(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not all(store.values()):
        raise EffdnnError("activation sparsity: the calibration data is empty or does not reach every activation layer")
    return {n: torch.cat(v) for n, v in store.items()}


def activation_sparsity_per_layer(model: nn.Module, batches: Any) -> dict[str, float]:
    """Zero fraction of each ReLU / FATReLU output of ``model`` on ``batches``."""
    acts = {n: m for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)}
    if not acts:
        return {}
    return {n: float((v == 0).float().mean()) for n, v in collect(model, acts, batches, inputs=False).items()}


def _calibrate(model: nn.Module, layers: Iterable[str], batches: Any,
               threshold_of: Callable[[nn.Module, torch.Tensor], float]) -> dict[str, float]:
    """Set each of ``layers`` to a FATReLU of threshold ``threshold_of(layer, its inputs)``, in order:
    each layer is calibrated on the inputs it sees once the earlier ones are thresholded."""
    thresholds = {}
    for name in layers:
        mod = model.get_submodule(name)
        thresholds[name] = threshold_of(mod, collect(model, {name: mod}, batches, inputs=True)[name])
        set_threshold(model, name, thresholds[name])
    return thresholds


def calibrate_fatrelu(model: nn.Module, layers: Iterable[str], batches: Any, target: float) -> dict[str, float]:
    """Make each of ``layers`` a FATReLU (in place if it is one) whose threshold makes ~``target`` of its
    outputs zero (T = 0 where the ReLU alone is sparser)."""
    return _calibrate(model, layers, batches, lambda mod, x: max(float(torch.quantile(x, target)), 0.0))


def raise_zeros(model: nn.Module, layers: Iterable[str], batches: Any, extra: float) -> dict[str, float]:
    """Make each of ``layers`` a FATReLU that zeroes ``extra`` more of its outputs than it now does:
    its threshold is the quantile of its input at (fraction of inputs <= its threshold) + ``extra``."""
    def threshold_of(mod: nn.Module, x: torch.Tensor) -> float:
        t0 = float(mod.threshold) if isinstance(mod, FATReLU) else 0.0
        zeros = float((x <= t0).float().mean())
        return max(float(torch.quantile(x, min(zeros + extra, 1.0))), t0)

    return _calibrate(model, layers, batches, threshold_of)


def set_threshold(model: nn.Module, name: str, t: float) -> None:
    """Layer ``name`` becomes a FATReLU with threshold ``t`` (in place if it already is one)."""
    mod = model.get_submodule(name)
    if isinstance(mod, FATReLU):
        mod.threshold.fill_(t)
    else:
        model.set_submodule(name, FATReLU(t).to(model_device(model)))


class GradualFATReLU(Callback):
    """Recalibrates the FATReLU thresholds ``n`` times, every ``dt`` steps, to the AGP cubic target."""

    def __init__(self, layers: list[str], batches: Any, target: float, total_steps: int, end: float, n: int) -> None:
        self.layers, self.batches, self.target, self.n = layers, batches, target, n
        self.dt = max(1, int(end * total_steps) // n)
        self.step = 0
        self.thresholds: dict[str, float] = {}

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        if self.step % self.dt == 0 and self.step // self.dt <= self.n:
            self.thresholds = calibrate_fatrelu(model, self.layers, self.batches,
                                                agp_sparsity(self.step, self.target, n=self.n, dt=self.dt))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def report(self) -> dict[str, Any]:
        return {"fatrelu_thresholds": self.thresholds} if self.thresholds else {}


class ActivationL1(Callback):
    """Adds lambda * sum over layers of mean |a| (the layers' outputs in the training forward pass)."""

    @staticmethod
    def penalty(a: torch.Tensor) -> torch.Tensor:
        return a.abs().mean()

    def __init__(self, names: list[str], weight: float) -> None:
        self.names, self.weight = names, weight
        self.acts: list[torch.Tensor] = []
        self.handles: list[Any] = []
        self.last = 0.0

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        mods = dict(model.named_modules())
        missing = [n for n in self.names if n not in mods]
        if missing:
            raise EffdnnError(f"activation_sparsity: layers {missing} are gone from the model")

        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if mod.training:
                self.acts.append(out)

        self.handles = [mods[n].register_forward_hook(hook) for n in self.names]

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if not self.acts:
            return None
        term = self.weight * sum(self.penalty(a) for a in self.acts)
        self.acts = []
        self.last = float(term.detach())
        return term

    def on_fit_end(self, model: nn.Module) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.acts = [], []

    def report(self) -> dict[str, Any]:
        return {"activation_l1_last": self.last}


def hoyer_density(a: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Batch mean of the normalised Hoyer-square measure (sum |a|)^2 / (n * sum a^2) of each sample
    (DeepHoyer eq. 4 divided by n): 1 for a constant map, 1/n for a single non-zero, 1 for all zeros
    (eps keeps it finite; a dead map has no gradient either way)."""
    flat = a.reshape(a.shape[0], -1)
    l1 = flat.abs().sum(1)
    l2 = flat.square().sum(1)
    return ((l1.square() + eps) / (flat.shape[1] * l2 + eps)).mean()


class ActivationHoyer(ActivationL1):
    """Adds lambda * sum over layers of the normalised Hoyer-square measure of their outputs."""

    penalty = staticmethod(hoyer_density)

    def report(self) -> dict[str, Any]:
        return {"activation_hoyer_last": self.last}


class FATReLUConfig(StrictModel):
    method: Literal["fatrelu"] = "fatrelu"
    target: float = Field(..., ge=0, lt=1, description="fraction of zero outputs each thresholded ReLU aims at")
    l1: float = Field(0.0, ge=0, description="also add this L1 activation penalty during fine-tuning")
    layers: list[str] | None = None
    batches: int = Field(8, ge=1, description="calibration batches")
    schedule: Literal["oneshot", "agp"] = "oneshot"
    end: float = Field(0.5, gt=0, le=1, description="agp: fraction of the fine-tuning over which the target is reached")
    steps: int = Field(10, ge=1, description="agp: threshold recalibrations")


class L1Config(StrictModel):
    method: Literal["l1"] = "l1"
    weight: float = Field(..., gt=0, description="lambda of the L1 activation penalty")
    extra_zeros: float = Field(0.0, ge=0, lt=1, description="after fine-tuning: FATReLU thresholds zeroing this much more of each layer's outputs")
    layers: list[str] | None = None
    batches: int = Field(8, ge=1, description="calibration batches (sparsity report, extra_zeros thresholds)")


class HoyerConfig(L1Config):
    method: Literal["hoyer"] = "hoyer"  # type: ignore[assignment]
    weight: float = Field(..., gt=0, description="lambda of the Hoyer-square activation penalty")


def _observe(model: nn.Module, config: FATReLUConfig | L1Config, ctx: TransformContext, extra_zeros: float = 0.0) -> tuple[list, list]:
    """The layers a method acts on and its calibration batches; reports the per-layer activation
    sparsity before the method and, through a finalizer, after fine-tuning (after ``extra_zeros``
    thresholds where asked)."""
    layers = activation_layers(model, config.layers, "activation_sparsity")
    batches = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
    ctx.extra["activation_sparsity_before"] = activation_sparsity_per_layer(model, batches)

    def after(final: nn.Module) -> nn.Module:
        if extra_zeros > 0:
            ctx.extra["fatrelu_thresholds"] = raise_zeros(final, layers, batches, extra_zeros)
        ctx.extra["activation_sparsity_per_layer"] = activation_sparsity_per_layer(final, batches)
        return final

    ctx.finalizers.append(after)
    return list(layers), batches


@ACTIVATION_SPARSITY.register("fatrelu", FATReLUConfig)
def fatrelu(model: nn.Module, config: FATReLUConfig, ctx: TransformContext) -> nn.Module:
    """FATReLU: per-layer thresholds calibrated to a target activation sparsity (Kurtz et al. 2020)."""
    layers, batches = _observe(model, config, ctx)
    if config.schedule == "agp":
        if ctx.finetune is None:
            raise EffdnnError("activation_sparsity.schedule: agp raises the thresholds during fine-tuning: add a finetune block")
        for name in layers:  # plain ReLUs (threshold 0) to start from: nothing to calibrate
            set_threshold(model, name, 0.0)
        total = ctx.steps_per_epoch(ctx.finetune) * ctx.finetune.epochs
        ctx.callbacks.append(GradualFATReLU(layers, batches, config.target, total, config.end, config.steps))
    else:
        ctx.extra["fatrelu_thresholds"] = calibrate_fatrelu(model, layers, batches, config.target)
    if config.l1 > 0:
        ctx.callbacks.append(ActivationL1(layers, config.l1))
    return model


def _penalty(model: nn.Module, config: L1Config, ctx: TransformContext, callback: type[ActivationL1]) -> nn.Module:
    layers, _ = _observe(model, config, ctx, config.extra_zeros)
    ctx.callbacks.append(callback(layers, config.weight))
    return model


@ACTIVATION_SPARSITY.register("l1", L1Config)
def l1_penalty(model: nn.Module, config: L1Config, ctx: TransformContext) -> nn.Module:
    """L1 penalty on activations during fine-tuning (Georgiadis 2019)."""
    return _penalty(model, config, ctx, ActivationL1)


@ACTIVATION_SPARSITY.register("hoyer", HoyerConfig)
def hoyer_penalty(model: nn.Module, config: HoyerConfig, ctx: TransformContext) -> nn.Module:
    """Hoyer-square penalty on activations during fine-tuning (Yang, Wen & Li 2020)."""
    return _penalty(model, config, ctx, ActivationHoyer)

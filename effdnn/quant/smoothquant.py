"""SmoothQuant: move activation outliers into the weights before quantizing both (Xiao, Lin, Seznec,
Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023).

A Linear computes Y = X W^T. For any positive per-input-channel s, Y = (X diag(s)^-1) (W diag(s))^T,
so channels with large activations can be scaled down and their weight columns up. SmoothQuant's
choice (eq. 4), with the migration strength alpha (0: nothing moves, 1: everything moves)::

    s_j = max_t |X_{t,j}|^alpha / max_i |W_{i,j}|^(1 - alpha)

calibrated on the calibration batches; layers that read the same tensor (q / k / v) share one s
(their weight maxima are taken together). The division by s is folded offline where that is exact
(sec. 4; ``smooth_fold.py``): into the LayerNorm or Linear that produced X, or into a Linear whose
output channels reach X through per-channel ops only (attention's value projection -> its output
projection). Each fold is checked on a calibration batch (the model's output must not change: in a
post-LN transformer such as BERT the LayerNorm output is also the residual stream, so folding there
would change the model); where no fold is exact the layer keeps an explicit scale: a ``smooth_scale``
buffer whose inverse multiplies its input (a forward pre-hook; a ``Mul`` in the ONNX file).

Recipe block (PTQ plus ``alpha``)::

    quantize: {method: smoothquant, alpha: 0.5, weight: {bits: 8, granularity: per_channel},
               act: {bits: 8, dynamic: per_token}}
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..registry import QUANTIZE
from ..transform import TransformContext
from ..utils.batches import head, iter_inputs, model_device
from .ptq import PTQConfig, ptq_pipeline
from .smooth_fold import channel_candidates, find_producers, input_of, model_outputs, trace_linears, try_fold
from .stats import InputStats, check_batch_keys, collect_input_stats


Factors = Callable[[list[str], dict[str, InputStats]], torch.Tensor]  # (group's layer names, input stats) -> s


def divide_by_smooth_scale(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of an explicitly smoothed layer: its input times 1 / smooth_scale."""
    return (args[0] * module.smooth_inv, *args[1:])


def smoothing_factors(absx: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (SmoothQuant eq. 4), W_j over every weight reading X."""
    absw = torch.stack([w.detach().abs().amax(0).float().cpu() for w in weights]).amax(0)
    s = absx.clamp_min(1e-5).pow(alpha) / absw.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-5, 1e5)


def _explicit(m: nn.Linear, s: torch.Tensor) -> None:
    m.register_buffer("smooth_scale", s.to(m.weight.device))
    m.register_buffer("smooth_inv", 1.0 / m.smooth_scale)
    m.weight.mul_(m.smooth_scale[None, :])
    m.register_forward_pre_hook(divide_by_smooth_scale)


@torch.no_grad()
def smooth_model(model: nn.Module, alpha: float, data: Iterable[Any], max_batches: int | None,
                 layers: dict[str, nn.Linear] | None = None, explicit: bool = True,
                 fold: bool = True, factors: Factors | None = None, tag: str = "smoothquant") -> list[dict[str, Any]]:
    """Smooth ``layers`` (default: every Linear) of ``model`` in place; one report row per group: its
    layers, where the division went (``folded_into``: a module name, ``"explicit scale"`` or None) and
    ``max_scale``. ``fold=False``: every group keeps an explicit scale (the unfolded reference).
    ``factors(names, stats)``: another choice of s per group (AWQ's search; stats then hold Hessians)."""
    layers = layers or {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if not layers:
        raise EffdnnError(f"{tag}: the model has no Linear layer to smooth")
    batches = list(itertools.islice(iter_inputs(data, max_batches, model_device(model)), max_batches))
    if not batches:
        raise EffdnnError(f"{tag}: the calibration set is empty (no batches)")
    check_batch_keys(model, batches[0], tag)
    stats = collect_input_stats(model, layers, batches, None, tag, hessian=factors is not None)
    producers, order = trace_linears(model, layers, batches[0])
    modules = dict(model.named_modules())
    groups: dict[str | None, list[str]] = {}
    for n in layers:
        groups.setdefault(producers[n], []).append(n)
    plan = [(prod, sub) for prod, names in groups.items() for sub in ([names] if prod is not None else [[n] for n in names])]
    # every s from the weights as they were: a fold into a Linear's rows must not change another group's s
    scales = [factors(sub, stats) if factors is not None else
              smoothing_factors(stats[sub[0]].absmax, [layers[n].weight for n in sub], alpha) for _, sub in plan]
    probe = head(batches[0], 4)  # a few examples check each fold
    ref = model_outputs(model, probe)
    rows = []
    for (prod, names), s in zip(plan, scales):
        group = [layers[n] for n in names]
        row = {"layers": names, "folded_into": None, "max_scale": float(s.max())}
        if bool((s == 1).all()):  # nothing moves (AWQ's a = 0): no fold, no explicit scale
            rows.append(row)
            continue
        if fold and prod is not None:  # X is a LayerNorm's / Linear's output: no earlier layer reaches it per channel
            row["folded_into"] = prod if try_fold(model, modules[prod], s, group, probe, ref) else None
        elif fold:
            x0 = input_of(model, group[0], probe)
            row["folded_into"] = next((t for t in channel_candidates(modules, order, names)
                                       if try_fold(model, modules[t], s, group, probe, ref, x0)), None)
        if row["folded_into"] is None:
            if explicit:
                for m in group:
                    _explicit(m, s)
                row["folded_into"] = "explicit scale"
            else:
                row["max_scale"] = 1.0
        rows.append(row)
    return rows


class SmoothQuantConfig(PTQConfig):
    method: Literal["smoothquant"] = "smoothquant"  # type: ignore[assignment]
    alpha: float = Field(0.5, ge=0, le=1)
    explicit_scale: bool = True  # layers with no exact fold get an explicit input scale (else left as they are)
    fold: bool = True  # fold the division into the producing LayerNorm / Linear where that is exact


@QUANTIZE.register("smoothquant", SmoothQuantConfig, "SmoothQuant (Xiao et al. 2023): outliers moved into the weights, then PTQ")
def smoothquant(model: nn.Module, config: SmoothQuantConfig, ctx: TransformContext) -> nn.Module:
    """SmoothQuant (Xiao et al., ICML 2023) with migration strength ``alpha``, then PTQ."""
    if config.awq is not None:
        raise EffdnnError("smoothquant: awq and smoothquant both rescale the weight columns: give one of them")

    def pre(m: nn.Module, data: Callable[[], Iterable[Any]]) -> None:
        ctx.extra["smoothquant"] = smooth_model(m, config.alpha, data(), None, None, config.explicit_scale, config.fold)
        return None

    return ptq_pipeline(model, config, ctx, pre)


__all__ = ["SmoothQuantConfig", "divide_by_smooth_scale", "find_producers", "smooth_model", "smoothing_factors",
           "smoothquant"]

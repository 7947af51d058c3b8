"""SmoothQuant: move activation outliers into the weights before quantizing both (Xiao, Lin, Seznec,
Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023).

A Linear computes Y = X W^T. For any positive per-input-channel s, Y = (X diag(s)^-1) (W diag(s))^T,
so channels with large activations can be scaled down and their weight columns up. SmoothQuant's
choice (eq. 4), with the migration strength alpha (0: nothing moves, 1: everything moves)::

    s_j = max_t |X_{t,j}|^alpha / max_i |W_{i,j}|^(1 - alpha)

calibrated on the calibration batches; layers that read the same tensor (q / k / v) share one s
(their weight maxima are taken together). The division by s is folded into the layer that produced
X where that is exact: a LayerNorm (its weight and bias divided by s) or a Linear (its output rows
divided by s). Each fold is checked on a calibration batch (the model's output must not change: in a
post-LN transformer such as BERT the LayerNorm output is also the residual stream, so folding there
would change the model); where no fold is exact the layer keeps an explicit scale: a ``smooth_scale``
buffer whose inverse multiplies its input (a forward pre-hook; the integer deployment applies it in
its activation quantization).

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
from ..utils.batches import forward, head, iter_inputs, model_device
from .ptq import PTQConfig, ptq_pipeline
from .stats import check_batch_keys, collect_input_stats


def divide_by_smooth_scale(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of an explicitly smoothed layer: its input times 1 / smooth_scale."""
    return (args[0] * module.smooth_inv, *args[1:])


def smoothing_factors(absx: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (SmoothQuant eq. 4), W_j over every weight reading X."""
    absw = torch.stack([w.detach().abs().amax(0).float().cpu() for w in weights]).amax(0)
    s = absx.clamp_min(1e-5).pow(alpha) / absw.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-5, 1e5)


def _key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()))


@torch.no_grad()
def find_producers(model: nn.Module, layers: dict[str, nn.Linear], x: Any) -> dict[str, str | None]:
    """Each layer's producer: the LayerNorm / Linear whose output tensor is exactly its input (one
    batch), else None."""
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.Linear))}
    made: dict[tuple, str] = {}
    keep: list[torch.Tensor] = []  # outputs stay alive, so no address is reused during the pass
    found: dict[str, str | None] = {n: None for n in layers}

    def record(name: str) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                made[_key(out)] = name
                keep.append(out)
        return hook

    def lookup(name: str) -> Callable:
        def hook(_m: nn.Module, inp: tuple) -> None:
            found[name] = made.get(_key(inp[0]))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in candidates.items()]
    hooks += [m.register_forward_pre_hook(lookup(n)) for n, m in layers.items()]
    try:
        forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    return found


def _fold(producer: nn.Module, s: torch.Tensor, group: list[nn.Linear]) -> None:
    s = s.to(producer.weight.device)
    if isinstance(producer, nn.LayerNorm):
        producer.weight.div_(s)
        if producer.bias is not None:
            producer.bias.div_(s)
    else:
        producer.weight.div_(s[:, None])
        if producer.bias is not None:
            producer.bias.div_(s)
    for m in group:
        m.weight.mul_(s.to(m.weight.device)[None, :])


def _explicit(m: nn.Linear, s: torch.Tensor) -> None:
    m.register_buffer("smooth_scale", s.to(m.weight.device))
    m.register_buffer("smooth_inv", 1.0 / m.smooth_scale)
    m.weight.mul_(m.smooth_scale[None, :])
    m.register_forward_pre_hook(divide_by_smooth_scale)


def _outputs(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict) or hasattr(y, "values"):
        return [v for v in y.values() if isinstance(v, torch.Tensor)]
    if isinstance(y, (tuple, list)):
        return [v for v in y if isinstance(v, torch.Tensor)]
    return []


def _same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-3) -> bool:
    return all(float((u - v).norm() / v.norm().clamp_min(1e-12)) < tol for u, v in zip(a, b))


@torch.no_grad()
def smooth_model(model: nn.Module, alpha: float, data: Iterable[Any], max_batches: int | None,
                 layers: dict[str, nn.Linear] | None = None, explicit: bool = True) -> list[dict[str, Any]]:
    """Smooth ``layers`` (default: every Linear) of ``model`` in place; one report row per group."""
    layers = layers or {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if not layers:
        raise EffdnnError("smoothquant: the model has no Linear layer to smooth")
    batches = list(itertools.islice(iter_inputs(data, max_batches, model_device(model)), max_batches))
    if not batches:
        raise EffdnnError("smoothquant: the calibration set is empty (no batches)")
    check_batch_keys(model, batches[0], "smoothquant")
    stats = collect_input_stats(model, layers, batches, None, "smoothquant", hessian=False)
    producers = find_producers(model, layers, batches[0])
    modules = dict(model.named_modules())
    groups: dict[str | None, list[str]] = {}
    for n in layers:
        groups.setdefault(producers[n], []).append(n)
    probe = head(batches[0], 4)  # a few examples check each fold
    ref = _outputs(forward(model, probe))
    rows = []
    for prod, names in groups.items():
        for sub in ([names] if prod is not None else [[n] for n in names]):
            rows.append(_smooth_group(model, modules, prod, sub, layers, stats, alpha, probe, ref, explicit))
    return rows


def _smooth_group(model: nn.Module, modules: dict[str, nn.Module], prod: str | None, names: list[str],
                  layers: dict[str, nn.Linear], stats: dict, alpha: float, x: Any, ref: list[torch.Tensor],
                  explicit: bool) -> dict[str, Any]:
    group = [layers[n] for n in names]
    s = smoothing_factors(stats[names[0]].absmax, [m.weight for m in group], alpha)
    if prod is not None:
        _fold(modules[prod], s, group)
        if _same(_outputs(forward(model, x)), ref):
            return {"layers": names, "folded_into": prod, "max_scale": float(s.max())}
        _fold(modules[prod], 1.0 / s, group)  # not exact (the producer's output is read elsewhere): undo
    if not explicit:
        return {"layers": names, "folded_into": None, "max_scale": 1.0}
    for m in group:
        _explicit(m, s)
    return {"layers": names, "folded_into": "explicit scale", "max_scale": float(s.max())}


class SmoothQuantConfig(PTQConfig):
    method: Literal["smoothquant"] = "smoothquant"  # type: ignore[assignment]
    alpha: float = Field(0.5, ge=0, le=1)
    explicit_scale: bool = True  # layers with no exact fold get an explicit input scale (else left as they are)


@QUANTIZE.register("smoothquant", SmoothQuantConfig, "SmoothQuant (Xiao et al. 2023): outliers moved into the weights, then PTQ")
def smoothquant(model: nn.Module, config: SmoothQuantConfig, ctx: TransformContext) -> nn.Module:
    """SmoothQuant (Xiao et al., ICML 2023) with migration strength ``alpha``, then PTQ."""

    def pre(m: nn.Module, data: Callable[[], Iterable[Any]]) -> None:
        ctx.extra["smoothquant"] = smooth_model(m, config.alpha, data(), None, None, config.explicit_scale)
        return None

    return ptq_pipeline(model, config, ctx, pre)


__all__ = ["SmoothQuantConfig", "divide_by_smooth_scale", "find_producers", "smooth_model", "smoothing_factors",
           "smoothquant"]

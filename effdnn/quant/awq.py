"""AWQ: activation-aware per-input-channel weight scaling before quantization (Lin, Tang, Tang, Yang,
Chen, Wang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization for On-Device LLM
Compression and Acceleration", MLSys 2024).

Weight channels that meet large activations matter most; scaling them up by s before quantizing
lowers their relative rounding error, and the input is divided by s (sec. 3.2). For the Linears that
read one tensor X (q / k / v share it), AWQ searches (eq. 5)::

    s = s_X^a / sqrt(max s_X^a * min s_X^a),   s_X,j = mean_t |X_{t,j}|,   a in {0, 1/n, ..., (n-1)/n}
    a* = argmin_a  sum_layers || Q(W diag(s)) diag(s)^-1 X - W X ||^2

over the calibration tokens, Q the layer's own weight quantizer (the same grid PTQ then fits). The
error is computed from H = 2 X X^T / T as tr(D H D^T) / 2, D = Q(W diag(s)) diag(s)^-1 - W, so no
activation is stored. a = 0 is round-to-nearest, so on the calibration data AWQ is never worse than
RTN. The chosen s multiplies the weight columns and 1/s is folded into the producing LayerNorm /
Linear where that is exact, else applied as an explicit input scale (SmoothQuant's machinery,
``smoothquant.smooth_model``). Weight clipping search (the reference code's ``auto_clip``) is not done.

Recipe (an option of PTQ's weights; with ``method: gptq`` GPTQ then solves the scaled weights)::

    quantize: {method: ptq, weight: {bits: 4, granularity: per_group, group_size: 32}, act: null,
               awq: {grid: 20}}
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..registry import StrictModel
from .plan import layer_specs, quant_layers
from .stats import InputStats

FakeQuant = Callable[[torch.Tensor], torch.Tensor]


class AWQSpec(StrictModel):
    grid: int = Field(20, ge=2, le=200)  # exponents a = 0, 1/grid, ..., (grid-1)/grid


def awq_scales(absmean: torch.Tensor, a: float) -> torch.Tensor:
    """s = s_X^a / sqrt(max * min) (AWQ's normalisation), s_X = mean |X| per input channel."""
    s = absmean.float().clamp_min(1e-4).pow(a)  # the reference code's floor, so silent channels keep s > 0
    return s / (s.max() * s.min()).sqrt()


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||(W_hat - W) X||^2 / T = tr(D H D^T) / 2 with H = 2 X X^T / T."""
    D = (W_hat - W).float()
    return float(((D @ H.float()) * D).sum() / 2)


@torch.no_grad()
def search_scale(weights: list[torch.Tensor], fake_quants: list[FakeQuant], absmean: torch.Tensor, H: torch.Tensor,
                 grid: int) -> tuple[torch.Tensor, float, float, float]:
    """(s, a*, error at a*, error at a = 0 (round to nearest)) of AWQ's grid search for layers that read
    one input (``weights`` (out_i, in), each quantized by its ``fake_quants`` callable)."""
    best: tuple[float, float, torch.Tensor] | None = None
    rtn = float("nan")
    for i in range(grid):
        a = i / grid
        s = awq_scales(absmean, a)
        err = sum(output_error(W, q(W.float() * s) / s, H) for W, q in zip(weights, fake_quants))
        if i == 0:
            rtn = err
        if best is None or err < best[0]:
            best = (err, a, s)
    assert best is not None
    return best[2], best[1], best[0], rtn


def _fake_quant(spec: Any, name: str) -> FakeQuant:
    from .ptq import _quantizer  # ptq imports this module for its pre-step

    def fq(w: torch.Tensor) -> torch.Tensor:
        wq = _quantizer(spec, "weight", name)
        wq.calibrate(w)
        return wq(w)

    return fq


def awq_layers(model: nn.Module, config: Any, tag: str) -> dict[str, tuple[nn.Linear, Any]]:
    """The Linears whose weights the config quantizes to int: name -> (module, weight spec)."""
    layers, first, last = quant_layers(model, config, tag)
    out = {}
    for n, m in layers:
        spec = layer_specs(n, config, first, last, m)[0]
        if type(m) is nn.Linear and spec is not None and spec.format == "int":
            out[n] = (m, spec)
    if not out:
        raise EffdnnError(f"{tag}: awq needs Linear layers with int weights; the config quantizes none")
    return out


def awq_model(model: nn.Module, config: Any, data: Iterable[Any], tag: str) -> list[dict[str, Any]]:
    """Apply AWQ's scale search to every int-weight Linear of ``model`` in place (before PTQ swaps the
    layers); one report row per group of layers reading one tensor."""
    from .smoothquant import smooth_model  # smoothquant builds on ptq, which imports this module

    chosen = awq_layers(model, config, tag)
    found: dict[tuple[str, ...], dict[str, float]] = {}

    def factors(names: list[str], stats: dict[str, InputStats]) -> torch.Tensor:
        st = stats[names[0]]
        s, a, err, rtn = search_scale([chosen[n][0].weight for n in names],
                                      [_fake_quant(chosen[n][1], f"{n}.weight") for n in names],
                                      st.absmean(), st.H(), config.awq.grid)
        found[tuple(names)] = {"awq_alpha": a, "awq_error": err, "rtn_error": rtn}
        return s

    rows = smooth_model(model, 0.0, data, None, {n: m for n, (m, _) in chosen.items()}, factors=factors, tag=f"{tag} awq")
    for r in rows:
        r.update(found.get(tuple(r["layers"]), {}))
    return rows


__all__ = ["AWQSpec", "awq_layers", "awq_model", "awq_scales", "output_error", "search_scale"]

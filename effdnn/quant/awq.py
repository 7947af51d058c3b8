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
``smoothquant.smooth_model``). Then (``clip: true``, as the reference code's ``auto_clip``) each
weight group's range is shrunk to max|w| r, r in {1, 0.95, ..., 0.55}, minimising that group's share
of the output error (:func:`search_clip`; max-calibrated symmetric weights only).

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
    clip: bool = True  # then the clipping search: each weight group's range shrunk by up to half (max calibrator)


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


@torch.no_grad()
def search_clip(W: torch.Tensor, H: torch.Tensor, fake_quant: FakeQuant, group: int, steps: int = 10,
                max_shrink: float = 0.5) -> tuple[torch.Tensor, float, float]:
    """(W clamped to the best range per row and group of ``group`` inputs, error after, error before):
    for each group, max|w| times r in {1, 1 - max_shrink / steps, ...} minimising its share of the
    output error d_g^T H_gg d_g (the reference code's ``auto_clip``: groups taken one at a time).
    ``fake_quant`` must fit its scale to max|w| (the max calibrator), so the clamp sets the range."""
    n, k = W.shape
    g = k // group
    Wb = W.detach().float().reshape(n, g, group)
    Hb = torch.stack([H[i * group:(i + 1) * group, i * group:(i + 1) * group] for i in range(g)]).float()
    amax = Wb.abs().amax(-1, keepdim=True)
    best_err, best = None, amax
    for i in range(steps):
        clip = amax * (1 - i * max_shrink / steps)
        Wc = torch.maximum(torch.minimum(Wb, clip), -clip)
        D = fake_quant(Wc.reshape(n, k)).reshape(n, g, group) - Wb
        err = torch.einsum("ngk,gkl,ngl->ng", D, Hb, D) / 2
        if best_err is None:
            before, best_err = err, err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], clip, best)
    out = torch.maximum(torch.minimum(Wb, best), -best).reshape(n, k)
    return out.to(W.dtype), float(best_err.sum()), float(before.sum())


def _clip_group(spec: Any, k: int) -> int | None:
    """The inputs per scale of a symmetric max-calibrated int weight (None: the clip search does not apply)."""
    if getattr(spec, "calibrator", "max") != "max" or getattr(spec, "symmetric", True) is False:
        return None
    if spec.granularity == "per_group":
        return spec.group_size
    return k if spec.granularity == "per_channel" else None


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
    layers, _, _ = quant_layers(model, config, tag)
    others = [n for n, m in layers if n not in chosen and hasattr(m, "weight")]  # convolutions, masked layers
    found: dict[tuple[str, ...], dict[str, float]] = {}

    def factors(names: list[str], stats: dict[str, InputStats]) -> torch.Tensor:
        st = stats[names[0]]
        s, a, err, rtn = search_scale([chosen[n][0].weight for n in names],
                                      [_fake_quant(chosen[n][1], f"{n}.weight") for n in names],
                                      st.absmean(), st.H(), config.awq.grid)
        found[tuple(names)] = {"awq_alpha": a, "awq_error": err, "rtn_error": rtn}
        if config.awq.clip:
            Hs = st.H().float() / (s[:, None] * s[None, :])  # the input is X / s now
            found[tuple(names)]["clip_error"] = 0.0
            for n in names:
                m, spec = chosen[n]
                group = _clip_group(spec, m.in_features)
                if group is not None:
                    clip_after[n] = (Hs, _fake_quant(spec, f"{n}.weight"), group, tuple(names))
        return s

    clip_after: dict[str, tuple] = {}
    rows = smooth_model(model, 0.0, data, None, {n: m for n, (m, _) in chosen.items()}, factors=factors, tag=f"{tag} awq")
    with torch.no_grad():
        for n, (Hs, fq, group, key) in clip_after.items():  # the weights carry their scales now
            w = chosen[n][0].weight
            clipped, after, _ = search_clip(w, Hs, fq, group)
            w.copy_(clipped)
            found[key]["clip_error"] += after
    for r in rows:
        r.update(found.get(tuple(r["layers"]), {}))
    if others:  # named, never skipped silently
        rows.append({"layers": others, "folded_into": None, "note": "not a plain Linear with int weights: no AWQ scales"})
    return rows


__all__ = ["AWQSpec", "awq_layers", "awq_model", "awq_scales", "output_error", "search_clip", "search_scale"]

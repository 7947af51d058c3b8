"""GPTQ: post-training weight quantization that corrects each rounding error with the columns not yet
quantized (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023).

Per Linear layer, minimise ||W X - W_hat X||^2 over the calibration inputs X. With the layer Hessian
H = 2 X X^T (+ damp * mean(diag H) * I), quantize the input columns one at a time; after column q
the still-float columns F absorb its error (the OBS update, GPTQ eq. 2-3)::

    delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{q,:}

GPTQ's three changes make this fast and stable: every row shares one column order (arbitrary
order, section 3 step 1), updates are applied lazily in blocks of B columns (step 2: within a block,
then once to the rest as ``W[:, i2:] -= Err @ Hinv[i1:i2, i2:]``), and the rows of H_F^-1 are read
from the upper Cholesky factor of H^-1 (step 3: numerically stable). ``act_order`` quantizes the
columns with the largest diag(H) first (the paper's "act-order" heuristic).

The grid is the layer's round-to-nearest grid (``weight_quant``'s params fitted to the float weight,
per channel or per group of consecutive inputs: "static groups"), so GPTQ only changes which grid
point each weight takes and the deployed format (codes + scales) is RTN's. Round-to-nearest stays
the baseline (``method: ptq``).

Recipe block::

    quantize: {method: gptq, weight: {bits: 4, granularity: per_group, group_size: 32},
               act: null, act_order: true, block_size: 128, damp: 0.01, smoothquant: null, awq: null}
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..errors import EffdnnError
from ..formats import IntFormat
from ..registry import QUANTIZE
from ..transform import TransformContext
from .config import TensorSpec
from .modules import QuantLinear
from .plan import layer_specs, quant_layers
from .ptq import PTQConfig, ptq_pipeline
from .stats import collect_input_stats


def grid_params(wq: Any, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(scale, zero point) expanded to the weight's shape, qmin, qmax of a calibrated int quantizer."""
    fmt: IntFormat = wq.fmt
    p = wq.params
    g = fmt.granularity
    n = g.to_blocks(torch.empty(shape, device="meta")).shape[1]
    s = g.from_blocks(p.scale.reshape(-1, 1).expand(-1, n), shape)
    z = g.from_blocks(p.zero_point.reshape(-1, 1).expand(-1, n), shape)
    return s.float(), z.float(), fmt.qmin, fmt.qmax


def _quant(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z) * s


def _upper_inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1 (GPTQ step 3)."""
    H = H + damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def gptq_solve(W: torch.Tensor, H: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, qmin: int, qmax: int,
               block_size: int = 128, act_order: bool = True, damp: float = 0.01) -> torch.Tensor:
    """GPTQ-quantized ``W`` (out, in) on the grid (S, Z, qmin..qmax, each (out, in)) given the
    Hessian ``H`` (in, in) of its inputs. Returns the dequantized weights (grid values)."""
    W, H = W.detach().float().clone(), H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(W.shape[1])
    W, S, Z, H = W[:, perm], S[:, perm], Z[:, perm], H[perm][:, perm]
    Hinv = _upper_inverse_cholesky(H, damp).float()
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], block_size):
        i2 = min(i1 + block_size, W.shape[1])
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = _quant(w, S[:, i1 + i], Z[:, i1 + i], qmin, qmax)
            Q[:, i1 + i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


def reconstruction_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||(W - W_hat) X||^2 / T = tr(D H D^T) / 2 with D = W - W_hat (H = 2 X X^T / T)."""
    D = (W - W_hat).double()
    return float(((D @ H.double()) * D).sum() / 2)


class GPTQConfig(PTQConfig):
    method: Literal["gptq"] = "gptq"  # type: ignore[assignment]
    act: TensorSpec | None = None  # weight-only unless given (GPTQ is a weight method); same keys as ptq's act
    act_order: bool = True
    block_size: int = Field(128, ge=1)
    damp: float = Field(0.01, gt=0, le=1)
    smoothquant: float | None = Field(None, ge=0, le=1)  # SmoothQuant's alpha, applied first

    @model_validator(mode="after")
    def _int_weights(self) -> "GPTQConfig":
        w = self.weight
        if w is None or w.format != "int":
            raise ValueError("gptq quantizes int weights: give weight: {bits: 2..8, ...}")
        if not 2 <= w.bits <= 8:
            raise ValueError(f"gptq: weight bits must be in 2..8, got {w.bits}")
        if self.awq is not None and self.smoothquant is not None:
            raise ValueError("gptq: awq and smoothquant both rescale the weight columns: give one of them")
        return self


def _gptq_layers(model: nn.Module, config: GPTQConfig) -> dict[str, nn.Linear]:
    layers, first, last = quant_layers(model, config, "gptq")
    out = {n: m for n, m in layers if type(m) is nn.Linear and layer_specs(n, config, first, last)[0] is not None}
    if not out:
        raise EffdnnError("gptq: the model has no Linear layer to quantize (GPTQ solves Linear weights)")
    for n, m in out.items():
        spec = layer_specs(n, config, first, last)[0]
        if spec.granularity == "per_group" and m.in_features % spec.group_size:
            raise EffdnnError(f"gptq: layer {n}: group_size {spec.group_size} does not divide its {m.in_features} inputs")
        if spec.format != "int" or not 2 <= spec.bits <= 8:
            raise EffdnnError(f"gptq: layer {n}: weight must be int with 2..8 bits, got {spec.format} {spec.bits}")
    return out


def _shared_hessians(stats: dict[str, Any], layers: dict[str, nn.Module]) -> list[list[str]]:
    """Layers grouped by identical input statistics (the same input tensor) and code range: GPTQ's rows
    are independent given H, so a group is solved as one stacked weight."""
    groups: list[list[str]] = []
    rng = {n: (m.weight_quant.fmt.qmin, m.weight_quant.fmt.qmax) for n, m in layers.items()}
    for n, st in stats.items():
        for g in groups:
            ref = stats[g[0]]
            if rng[g[0]] == rng[n] and ref.rows == st.rows and ref.hessian.shape == st.hessian.shape and torch.equal(ref.hessian, st.hessian):
                g.append(n)
                break
        else:
            groups.append([n])
    return groups


def gptq_step(config: GPTQConfig, extra: dict[str, Any]) -> Callable:
    """The PTQ pre-step of GPTQ: (SmoothQuant,) Hessians on the float model, then the solve after the
    layers are swapped (each weight replaced by its GPTQ grid values)."""

    def pre(model: nn.Module, data: Callable[[], Iterable[Any]]) -> Callable:
        layers = _gptq_layers(model, config)
        if config.smoothquant is not None:
            from .smoothquant import smooth_model

            extra["smoothquant"] = smooth_model(model, config.smoothquant, data(), None, layers)
        if config.awq is not None:  # AWQ's scales, then GPTQ solves the scaled weights
            from .awq import awq_model

            extra["awq"] = awq_model(model, config, data(), "gptq")
        stats = collect_input_stats(model, layers, data(), None, "gptq")

        def after(model: nn.Module, summary: list[dict[str, Any]]) -> None:
            rows = {r["layer"]: r for r in summary}
            for names in _shared_hessians(stats, layers):  # q / k / v read one tensor: one solve for their rows
                group = [layers[n] for n in names]
                W = torch.cat([m.weight.detach() for m in group])
                grids = [grid_params(m.weight_quant, m.weight.shape) for m in group]
                S, Z = torch.cat([g[0] for g in grids]), torch.cat([g[1] for g in grids])
                qmin, qmax = grids[0][2], grids[0][3]
                H = stats[names[0]].H()
                W_hat = gptq_solve(W, H, S, Z, qmin, qmax, config.block_size, config.act_order, config.damp)
                for m, n, w_hat, w, s, z in zip(group, names, W_hat.split([m.out_features for m in group]),
                                                W.split([m.out_features for m in group]), S.split([m.out_features for m in group]),
                                                Z.split([m.out_features for m in group])):
                    rows[n].update({"gptq_error": reconstruction_error(w, w_hat, H),
                                    "rtn_error": reconstruction_error(w, _quant(w.float(), s, z, qmin, qmax), H)})
                    with torch.no_grad():
                        m.weight.copy_(w_hat.to(m.weight.dtype))
                    m._wq_cache = None

        return after

    return pre


@QUANTIZE.register("gptq", GPTQConfig, "GPTQ weights (Frantar et al. 2023): 2-8 bits, per channel / group, act-order")
def gptq(model: nn.Module, config: GPTQConfig, ctx: TransformContext) -> nn.Module:
    """GPTQ (Frantar et al., ICLR 2023) inside the PTQ pipeline: Hessian-corrected weight rounding."""
    try:
        return ptq_pipeline(model, config, ctx, gptq_step(config, ctx.extra))
    except torch.linalg.LinAlgError:
        raise EffdnnError(f"gptq: a layer Hessian is not positive definite even with damp {config.damp}: raise damp") from None


__all__ = ["GPTQConfig", "gptq", "gptq_solve", "grid_params", "reconstruction_error"]

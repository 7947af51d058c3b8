"""SparseGPT (Frantar & Alistarh, ICML 2023, "SparseGPT: massive language models can be accurately pruned
in one-shot"): prune each Linear layer and update its remaining weights so that the layer's output on the
calibration inputs changes least.

For a weight W (rows: outputs, columns: inputs) with inputs X (calibration tokens), the layer-wise problem
is min ||W X - (M * W') X||^2 (eq. 1), every row sharing H = 2 X X^T / N + lambda I (lambda = ``damp``
times the mean of diag H). Algorithm 1 visits the columns left to right with U, the upper Cholesky factor
of H^-1 (the inverse Hessians of the shrinking column sets are its rows):

- at the start of every block of ``block_size`` columns, the block's mask is chosen by the OBS error of
  removing each weight, w_ij^2 / U_jj^2 (adaptive mask selection, section 3.3): the block's lowest
  ``sparsity`` fraction over all its rows; for N:M, the M - N lowest of every M consecutive columns of a
  row, chosen when the algorithm reaches them;
- a pruned weight's error e_i = w_ij / U_jj is spread over the columns not yet visited, W[i, j:] -= e_i
  U[j, j:] (the OBS update, eq. 3-4), lazily: within a block of ``block_size`` columns, then to the rest
  at once.

The layers may be pruned in the order they run, ``group`` at a time, each group's H measured on the model
whose earlier layers are already pruned (as the paper, block by block); by default every H comes from one
pass over the dense model. Linear layers only (a convolution is refused in one line, naming it).

    prune: {method: sparsegpt, sparsity: 0.5, batches: 4}      # or nm: "2:4"; group: 6; damp: 0.01
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..registry import PRUNE
from ..transform import TransformContext
from .select import select_layers
from .sparse import MaskCallback
from .unstructured import UnstructuredConfig, apply_masks, parse_nm, record_sparsity
from .wanda import _execution_order, input_norms


def _upper_inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """U with U^T U = (H + damp * mean(diag H) I)^-1, U upper triangular (float64)."""
    H = H.double() + damp * torch.diag(H).double().mean() * torch.eye(H.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def _block_mask(W1: torch.Tensor, d: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Pruned entries (True) of a block of columns from the OBS errors w^2 / d^2 (section 3.3)."""
    err = W1.pow(2) / d.pow(2).unsqueeze(0)
    if nm is not None:
        n, m = nm
        groups = err.reshape(err.shape[0], -1, m)
        cut = torch.zeros_like(groups, dtype=torch.bool)
        cut.scatter_(2, torch.topk(groups, m - n, dim=2, largest=False).indices, True)
        return cut.reshape(err.shape)
    k = int(err.numel() * sparsity)
    cut = torch.zeros(err.numel(), dtype=torch.bool)
    if k:
        cut[torch.argsort(err.flatten(), stable=True)[:k]] = True
    return cut.reshape(err.shape)


def sparsegpt_solve(W: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                    block_size: int = 128, damp: float = 0.01,
                    pruned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weights, keep-mask) of ``W`` (out, in) pruned by Algorithm 1 given the Hessian ``H`` (in, in).
    ``pruned``: a fixed mask of the weights to remove (True), instead of the adaptive selection."""
    if nm is not None and (W.shape[1] % nm[1] or block_size % nm[1]):
        raise EffdnnError(f"sparsegpt: {W.shape[1]} input columns and block_size {block_size} must be multiples "
                          f"of M = {nm[1]}")
    W, H = W.detach().double().clone(), H.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    U = _upper_inverse_cholesky(H, damp)
    cut = torch.zeros_like(W, dtype=torch.bool) if pruned is None else pruned.clone()
    for i1 in range(0, W.shape[1], block_size):
        i2 = min(i1 + block_size, W.shape[1])
        W1, U1, Err = W[:, i1:i2].clone(), U[i1:i2, i1:i2], torch.zeros(W.shape[0], i2 - i1, dtype=torch.float64)
        d = torch.diag(U1)
        if pruned is None and nm is None:  # the block's mask, from its OBS errors before its updates
            cut[:, i1:i2] = _block_mask(W1, d, sparsity, None)
        for j in range(i2 - i1):
            c = i1 + j
            if pruned is None and nm is not None and j % nm[1] == 0:
                cut[:, c:c + nm[1]] = _block_mask(W1[:, j:j + nm[1]], d[j:j + nm[1]], sparsity, nm)
            e = torch.where(cut[:, c], W1[:, j], torch.zeros_like(W1[:, j])) / U1[j, j]
            W1[:, j:] -= e.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            Err[:, j] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return W.masked_fill(cut, 0.0), ~cut


@torch.no_grad()
def input_hessians(model: nn.Module, layers: dict[str, nn.Module], data: Any, batches: int) -> dict[str, torch.Tensor]:
    """H = 2 X X^T / N of every layer's inputs over the first ``batches`` calibration batches."""
    acc: dict[str, list[Any]] = {}

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, inp: tuple, out: Any) -> None:
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            h, n = acc.get(name, (0.0, 0))
            acc[name] = [h + 2 * x.t() @ x, n + x.shape[0]]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        input_norms(model, {}, data, batches)  # one calibration pass (same checks as Wanda's)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in acc]
    if missing:
        raise EffdnnError(f"sparsegpt: layer {missing[0]} never ran on the calibration batches; exclude it")
    return {n: h / max(cnt, 1) for n, (h, cnt) in acc.items()}


class SparseGPTConfig(UnstructuredConfig):
    method: Literal["sparsegpt"] = "sparsegpt"  # type: ignore[assignment]
    block_size: int = Field(128, ge=1, description="columns per lazy batch of OBS updates")
    damp: float = Field(0.01, gt=0, description="lambda = damp * mean(diag H) added to H")
    group: int | None = Field(None, ge=1, description="layers pruned per calibration pass, in the order they run "
                              "(sequential, as the paper); null: every H from one pass over the dense model")


def prune_sparsegpt(model: nn.Module, config: SparseGPTConfig, ctx: TransformContext) -> nn.Module:
    """One-shot SparseGPT on every selected Linear layer; masks are kept through fine-tuning."""
    if config.schedule != "oneshot" or config.scope != "layer" or config.layer_sparsity:
        raise EffdnnError("sparsegpt: one-shot, per layer, one sparsity only (schedule oneshot, scope layer, no layer_sparsity)")
    layers = select_layers(model, config.layers, config.exclude)
    bad = next((n for n, m in layers.items() if not isinstance(m, nn.Linear)), None)
    if bad is not None:
        raise EffdnnError(f"sparsegpt: layer {bad} is a {type(layers[bad]).__name__}; it prunes Linear layers (exclude it)")
    data = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
    if not data:
        raise EffdnnError("sparsegpt: it is calibrated on data: pass data=<batches> (or run it in a recipe)")
    nm = parse_nm(config.nm) if config.nm is not None else None
    order = _execution_order(model, layers, data) if config.group else list(layers)
    step = config.group or len(order)
    for start in range(0, len(order), step):
        group = {n: layers[n] for n in order[start:start + step]}
        hessians = input_hessians(model, group, data, config.batches)
        masks = {}
        for n, m in group.items():
            w, keep = sparsegpt_solve(m.weight, hessians[n], config.final_sparsity, nm, config.block_size,
                                      config.damp)
            with torch.no_grad():
                m.weight.copy_(w.to(m.weight.dtype))
            masks[n] = keep.to(m.weight.device)
        apply_masks(group, masks)
    ctx.finalizers.append(record_sparsity(ctx, list(layers)))
    ctx.callbacks.append(MaskCallback())
    return model


PRUNE.register("sparsegpt", SparseGPTConfig,
               summary="SparseGPT: OBS weight updates, adaptive masks (Frantar & Alistarh 2023)")(prune_sparsegpt)

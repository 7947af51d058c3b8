"""Masks from saliency scores: how many to cut and where, separated from why (saliency.py).

Every function takes scores (higher = more important) and returns a boolean keep-mask of the same
shape; ties are broken by an optional second key (``tiebreak``, e.g. |w|, so weights a data-driven
saliency cannot tell apart go by magnitude), then by position (stable sort).
"""
from __future__ import annotations

import math

import torch

from ..errors import EffdnnError


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Sparsity must lie in [0, 1): pruning every weight of a layer leaves nothing to run."""
    if not (isinstance(sparsity, (int, float)) and 0.0 <= float(sparsity) < 1.0) or math.isnan(float(sparsity)):
        raise EffdnnError(f"{what}: must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def n_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` elements a sparsity removes (rounded to the nearest; at least one is kept)."""
    return min(int(round(numel * sparsity)), numel - 1) if numel else 0


def _ascending(flat: torch.Tensor, tiebreak: torch.Tensor | None) -> torch.Tensor:
    """Indices of ``flat`` from lowest to highest score; equal scores ordered by ``tiebreak``, then position."""
    if tiebreak is None:
        return torch.sort(flat, stable=True).indices
    first = torch.sort(tiebreak.detach().reshape(-1).float(), stable=True).indices
    return first[torch.sort(flat[first], stable=True).indices]


def topk_mask(scores: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``1 - sparsity`` fraction of elements with the largest scores (layer-wise pruning)."""
    check_sparsity(sparsity)
    flat = scores.detach().reshape(-1).float()
    k = n_pruned(flat.numel(), sparsity)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k:
        keep[_ascending(flat, tiebreak)[:k]] = False  # the first k are cut
    return keep.view_as(scores)


def row_topk_mask(scores: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``1 - sparsity`` fraction of each output's (row's) largest scores: every output of the
    layer keeps the same number of weights (Wanda's per-output comparison group, Sun et al. 2024, sec. 3)."""
    check_sparsity(sparsity)
    rows = scores.detach().reshape(scores.shape[0], -1).float()
    tb = tiebreak.detach().reshape(rows.shape).float() if tiebreak is not None else None
    return _rows_keep(rows, sparsity, tb).view_as(scores)


def _rows_keep(rows: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None) -> torch.Tensor:
    """Vectorised per-row top-k (ties by ``tiebreak``, then position)."""
    k = n_pruned(rows.shape[1], sparsity)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if not k:
        return keep
    order = torch.arange(rows.shape[1]).expand_as(rows)
    if tiebreak is not None:
        order = torch.sort(tiebreak, dim=1, stable=True).indices
    ranked = torch.sort(torch.gather(rows, 1, order), dim=1, stable=True).indices
    cut = torch.gather(order, 1, ranked[:, :k])
    return keep.scatter_(1, cut, False)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float,
                 tiebreak: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One threshold over all layers' scores together (global pruning): the ``sparsity`` fraction of
    all elements with the lowest scores are cut, wherever they are (Han et al. 2015 prune per layer;
    global ranking is the lottery-ticket / Blalock et al. 2020 variant). Scores must be comparable."""
    check_sparsity(sparsity)
    if not scores:
        return {}
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    keep = torch.ones_like(flat, dtype=torch.bool)
    k = n_pruned(flat.numel(), sparsity)
    if k:
        tb = torch.cat([tiebreak[n].detach().reshape(-1).float() for n in names]) if tiebreak else None
        keep[_ascending(flat, tb)[:k]] = False
    out, i = {}, 0
    for n in names:
        m = scores[n].numel()
        out[n] = keep[i:i + m].view_as(scores[n])
        i += m
    return out


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M structured sparsity (Mishra et al. 2021, NVIDIA Ampere 2:4): in every group of ``m``
    consecutive weights along the reduction dimension (a row of the weight seen as (out, in*kh*kw)),
    keep the ``n`` with the largest scores. A tail group shorter than ``m`` keeps ``min(n, len)``."""
    if not (1 <= n < m):
        raise EffdnnError(f"N:M sparsity needs 1 <= N < M, got {n}:{m}")
    rows = scores.detach().reshape(scores.shape[0], -1).float() if scores.dim() > 1 else scores.detach().reshape(1, -1).float()
    r, k = rows.shape
    pad = (-k) % m
    padded = torch.cat([rows, torch.full((r, pad), float("-inf"))], dim=1) if pad else rows  # (R, G*M)
    groups = padded.view(r, -1, m)  # (R, G, M)
    # stable descending order: the n best of each group (padding, at -inf, is never kept over a real weight)
    order = torch.sort(-groups, dim=-1, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    keep = keep.view(r, -1)[:, :k]
    return keep.reshape(scores.shape)


def channel_keep(scores: torch.Tensor, ratio: float, round_to: int = 1, min_keep: int = 1,
                 at_least: bool = False) -> torch.Tensor:
    """Indices (sorted) of the channels to keep when a ``ratio`` of ``len(scores)`` channels is removed.

    The removed count is rounded to the nearest (``at_least``: up, never less than asked: coarse units
    such as a grouped convolution's groups); the kept count is rounded up to a multiple of ``round_to``
    (fast kernels like multiples of 4 / 8)."""
    check_sparsity(ratio, "channel ratio")
    c = scores.numel()
    gone = math.ceil(c * ratio - 1e-9) if at_least else int(round(c * ratio))
    keep = max(min_keep, c - gone)
    if round_to > 1:
        keep = min(c, int(math.ceil(keep / round_to) * round_to))
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices[:keep]
    return torch.sort(order).values


def sparsity_of(mask: torch.Tensor) -> float:
    return 1.0 - float(mask.sum()) / max(mask.numel(), 1)

"""KL-divergence threshold search, as TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with
TensorRT", GTC; the pseudo-code on slide 30), vectorised over every candidate threshold at once.

For a histogram of |x| with B bins (2048) and L quantisation levels (128 for int8: the codes 0..127 of
|x|; generalised: ``IntFormat.magnitude_levels``, 256 for unsigned 8-bit activations), each candidate
i in [L, B) keeps the first i bins:

    P = hist[0:i], with the outliers sum(hist[i:]) folded into P[i-1]
    Q = hist[0:i] merged into L levels of i // L bins (the last level takes the remainder), each
        level's count expanded back evenly over the bins that are non-zero in P (empty bins stay empty)
    KL(P || Q) on the normalised P and Q (+inf where P > 0 and Q = 0)

and the threshold is (argmin_i KL + 0.5) * bin_width. Instead of a Python loop over i, all candidates
are (C, L) tensors: level sums, non-zero bin counts and sum p log p all come from prefix sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergences(hist: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P || Q) of every candidate ``i`` in [levels, B) for one histogram ``hist`` (B,).

    Returns (candidates i (C,), divergences (C,)). Computed per level, not per bin: with T the total
    count, S = sum(hist[:i]) (the mass of Q), pm_j the mass of P in level j and n_j its non-zero bins,

        KL = (sum_b p_b log p_b) / T - log T - (sum_j pm_j log(lsum_j / n_j)) / T + log S

    where the first sum comes from a prefix sum of h log h, so each candidate costs O(L), not O(B)."""
    h = hist.double().flatten()  # (B,)
    B = h.numel()
    cand = torch.arange(levels, max(levels, B), device=h.device)  # (C,)
    if cand.numel() == 0:
        return cand, torch.empty(0, dtype=torch.float64, device=h.device)
    cum = F.pad(h.cumsum(0), (1, 0))  # (B+1,) prefix counts
    cnz = F.pad((h > 0).double().cumsum(0), (1, 0))  # (B+1,) prefix non-zero bins
    hlogh = F.pad(torch.where(h > 0, h * torch.log(h.clamp_min(1e-300)), 0.0).cumsum(0), (1, 0))
    total = cum[-1]
    i = cand.unsqueeze(1)  # (C, 1)
    lv = torch.arange(levels, device=h.device).unsqueeze(0)  # (1, L)
    last = lv == levels - 1
    outliers = total - cum[i]  # (C, 1) folded into bin i-1
    p_last = h[i - 1] + outliers  # (C, 1)
    m = i // levels  # bins merged per level
    starts = lv * m  # (C, L)
    ends = torch.where(last, i, starts + m)
    lsum = cum[ends] - cum[starts]  # (C, L) level counts of hist[:i] (without the outliers)
    pm = lsum + last * outliers  # mass of P per level
    nz = cnz[ends] - cnz[starts] + last * ((h[i - 1] == 0) & (outliers > 0))  # non-zero bins of P per level
    sum_plogp = hlogh[i - 1] + torch.where(p_last > 0, p_last * torch.log(p_last.clamp_min(1e-300)), 0.0)
    ratio = torch.where(pm > 0, torch.log(lsum.clamp_min(1e-300) / nz.clamp_min(1)), 0.0)
    S = cum[i]
    kl = (sum_plogp - (pm * ratio).sum(1, keepdim=True)) / total - torch.log(total) + torch.log(S.clamp_min(1e-300))
    diverges = ((pm > 0) & (lsum <= 0)).any(1, keepdim=True) | (S <= 0)
    kl = torch.where(diverges, torch.full_like(kl, float("inf")), kl)
    return cand, kl.squeeze(1)


def kl_threshold(hist: torch.Tensor, bin_width: float, levels: int) -> float:
    """TensorRT's entropy threshold of |x| for one histogram: (argmin KL + 0.5) * bin width; the full
    histogram range when it has fewer bins than levels or every candidate diverges."""
    cand, kl = kl_divergences(hist, levels)
    if kl.numel() == 0 or not torch.isfinite(kl).any():
        return float(hist.numel() * bin_width)
    best = int(cand[int(torch.argmin(kl))])
    return (best + 0.5) * bin_width

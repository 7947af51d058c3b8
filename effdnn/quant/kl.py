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
are evaluated at once from prefix sums (level sums, non-zero bin counts, sum p log p); the levels that
candidates with the same i // L share are summed once (see ``kl_divergences``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergences(hist: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P || Q) of every candidate ``i`` in [levels, B) for one histogram ``hist`` (B,).

    Returns (candidates i (C,), divergences (C,)). Computed per level, not per bin: with T the total
    count, S = sum(hist[:i]) (the mass of Q), pm_j the mass of P in level j and n_j its non-zero bins,

        KL = (sum_b p_b log p_b) / T - log T - (sum_j pm_j log(lsum_j / n_j)) / T + log S

    where the first sum comes from a prefix sum of h log h. All candidates with the same m = i // L
    merge the same bins into their first L - 1 levels (only the last level, which ends at i and holds
    the outliers, differs), so those levels' sum is computed once per m: O(B + (B / L) L) in all."""
    h = hist.double().flatten()  # (B,)
    B = h.numel()
    cand = torch.arange(levels, max(levels, B), device=h.device)  # (C,)
    if cand.numel() == 0:
        return cand, torch.empty(0, dtype=torch.float64, device=h.device)
    cum = F.pad(h.cumsum(0), (1, 0))  # (B+1,) prefix counts
    cnz = F.pad((h > 0).double().cumsum(0), (1, 0))  # (B+1,) prefix non-zero bins
    hlogh = F.pad(torch.where(h > 0, h * torch.log(h.clamp_min(1e-300)), 0.0).cumsum(0), (1, 0))
    total = cum[-1]
    # the first L - 1 levels of every m = i // L: no outliers there, so P's mass is the level's count
    ms = torch.arange(1, (B - 1) // levels + 1, device=h.device).unsqueeze(1)  # (M, 1)
    starts = torch.arange(levels - 1, device=h.device).unsqueeze(0) * ms  # (M, L-1)
    lsum = cum[starts + ms] - cum[starts]
    nz = cnz[starts + ms] - cnz[starts]
    head = torch.where(lsum > 0, lsum * torch.log(lsum.clamp_min(1e-300) / nz.clamp_min(1)), 0.0).sum(1)  # (M,)
    # the last level of each candidate: bins [(L-1) m, i) plus the outliers sum(hist[i:])
    m = cand // levels
    first = (levels - 1) * m
    outliers = total - cum[cand]
    last_sum = cum[cand] - cum[first]
    last_pm = last_sum + outliers
    last_nz = cnz[cand] - cnz[first] + ((h[cand - 1] == 0) & (outliers > 0))
    last = torch.where(last_pm > 0, last_pm * torch.log(last_sum.clamp_min(1e-300) / last_nz.clamp_min(1)), 0.0)
    p_last = h[cand - 1] + outliers  # bin i-1 of P holds the outliers
    sum_plogp = hlogh[cand - 1] + torch.where(p_last > 0, p_last * torch.log(p_last.clamp_min(1e-300)), 0.0)
    S = cum[cand]
    kl = (sum_plogp - (head[m - 1] + last)) / total - torch.log(total) + torch.log(S.clamp_min(1e-300))
    diverges = ((last_pm > 0) & (last_sum <= 0)) | (S <= 0)
    return cand, torch.where(diverges, torch.full_like(kl, float("inf")), kl)


def kl_threshold(hist: torch.Tensor, bin_width: float, levels: int) -> float:
    """TensorRT's entropy threshold of |x| for one histogram: (argmin KL + 0.5) * bin width; the full
    histogram range when it has fewer bins than levels or every candidate diverges."""
    cand, kl = kl_divergences(hist, levels)
    if kl.numel() == 0 or not torch.isfinite(kl).any():
        return float(hist.numel() * bin_width)
    best = int(cand[int(torch.argmin(kl))])
    return (best + 0.5) * bin_width

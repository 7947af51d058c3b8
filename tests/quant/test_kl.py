"""The vectorised KL search against a plain loop implementation of TensorRT's pseudo-code."""
from __future__ import annotations

import math

import pytest
import torch

from effdnn.quant.kl import kl_divergences, kl_threshold


def kl_loop(hist: list[float], levels: int) -> list[float]:
    """Migacz 2017, slide 30, one threshold at a time."""
    B, out = len(hist), []
    for i in range(levels, B):
        p = hist[:i]
        p[i - 1] += sum(hist[i:])  # outliers into the last bin
        m = i // levels
        q = [0.0] * i
        for j in range(levels):
            s = j * m
            e = i if j == levels - 1 else s + m
            total = sum(hist[s:e])
            kept = [b for b in range(s, e) if p[b] > 0]  # empty bins stay empty
            for b in kept:
                q[b] = total / len(kept)
        P, Q, kl = sum(p), sum(q), 0.0
        for b in range(i):
            if p[b] > 0:
                if q[b] <= 0:
                    kl = math.inf
                    break
                kl += p[b] / P * math.log((p[b] / P) / (q[b] / Q))
        out.append(kl)
    return out


@pytest.mark.parametrize("seed,bins,levels,sparsity", [(0, 300, 16, 0.3), (1, 257, 32, 0.0), (2, 512, 8, 0.7),
                                                       (3, 200, 64, 0.5)])
def test_vectorised_kl_equals_loop(seed: int, bins: int, levels: int, sparsity: float) -> None:
    g = torch.Generator().manual_seed(seed)
    h = torch.floor(torch.rand(bins, generator=g) * 50) * torch.exp(-torch.arange(bins) / (bins / 4))
    h[torch.rand(bins, generator=g) < sparsity] = 0
    h = torch.floor(h)
    cand, kl = kl_divergences(h, levels)
    ref = torch.tensor(kl_loop(h.tolist(), levels), dtype=torch.float64)
    assert cand.tolist() == list(range(levels, bins))
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(kl), finite)
    assert torch.allclose(kl[finite], ref[finite], rtol=1e-9, atol=1e-12)
    best = int(torch.argmin(kl))
    assert best == min(range(len(ref)), key=lambda k: (ref[k].item(), k))


def test_threshold_is_argmin_plus_half_bin() -> None:
    h = torch.zeros(2048)
    h[:1000] = 100.0
    h[2000] = 1.0  # one outlier far out
    cand, kl = kl_divergences(h, 128)
    t = kl_threshold(h, 0.01, 128)
    assert t == pytest.approx((int(cand[torch.argmin(kl)]) + 0.5) * 0.01)
    assert kl_threshold(torch.zeros(100), 0.5, 128) == 50.0  # fewer bins than levels: the whole range

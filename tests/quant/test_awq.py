"""AWQ (Lin et al., MLSys 2024): the grid search of s = s_X^a against a slow reference that measures the
output error on the activations themselves; never worse than round to nearest on the calibration data;
on a small BERT the scaled model deploys and composes with GPTQ."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.awq import _fake_quant, search_clip, search_scale
from effdnn.quant.config import TensorSpec
from effdnn.quant.deploy_linear import deploy_linears
from tests.quant.tiny_bert import batches, tiny_bert

INT4_G32 = {"bits": 4, "granularity": "per_group", "group_size": 32}


def _rtn_int4_g32(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int4 (-8..7 codes, scale max|w| / 7) per group of 32 consecutive inputs, by hand."""
    g = w.reshape(w.shape[0], -1, 32)
    s = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 7
    return (torch.clamp(torch.round(g / s), -8, 7) * s).reshape(w.shape)


def test_search_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=g) * torch.linspace(0.05, 1, 64)
    X[:, [5, 40]] *= 25  # two salient channels (the paper's Fig. 2)
    W = torch.randn(24, 64, generator=g) * 0.1
    fq = _fake_quant(TensorSpec(**INT4_G32), "w")
    assert torch.allclose(fq(W), _rtn_int4_g32(W), atol=1e-7)  # the reference quantizer is PTQ's
    H = 2 * X.t().double() @ X.double() / X.shape[0]
    s, a, err, rtn = search_scale([W], [fq], X.abs().mean(0), H, grid=10)
    ref = []  # the slow reference: every grid point, output error measured on X itself
    for i in range(10):
        sx = X.abs().mean(0).pow(i / 10)
        sx = sx / (sx.max() * sx.min()).sqrt()
        W_hat = _rtn_int4_g32(W * sx) / sx
        ref.append(float(((X @ W_hat.t() - X @ W.t()) ** 2).sum(1).mean()))
    best = min(range(10), key=ref.__getitem__)
    assert a == best / 10 and best > 0  # activation-aware: some a > 0 beats round to nearest
    assert err == pytest.approx(ref[best], rel=1e-4) and rtn == pytest.approx(ref[0], rel=1e-4)
    assert err < 0.9 * rtn


def test_clip_search_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 64, generator=g)
    W = torch.randn(6, 64, generator=g) * 0.1
    W[0, 3] = 1.0  # an outlier weight: clipping its group pays
    H = 2 * X.t().double() @ X.double() / X.shape[0]
    got, after, before = search_clip(W, H, _fake_quant(TensorSpec(**INT4_G32), "w"), 32)
    ref = W.clone()
    for i in range(6):
        for j in range(2):  # each row and group alone: its clamp with the lowest error of its partial output
            w = W[i, 32 * j:32 * j + 32]
            x = X[:, 32 * j:32 * j + 32]
            errs = []
            for k in range(10):
                c = w.abs().max() * (1 - k * 0.05)
                q = _rtn_int4_g32(torch.clamp(w, -c, c)[None].expand(1, 32).contiguous())[0]
                errs.append((float(((x @ (q - w)) ** 2).mean()), k, c))
            best = min(errs, key=lambda e: (round(e[0], 9), e[1]))
            ref[i, 32 * j:32 * j + 32] = torch.clamp(w, -best[2], best[2])
    assert torch.allclose(got, ref, atol=1e-6) and after <= before
    assert bool((got[0, :32].abs().max() < 1.0))  # the outlier's group was clipped


def test_awq_on_small_bert_deploys_and_composes_with_gptq() -> None:
    spec = {"method": "ptq", "weight": INT4_G32, "act": None, "awq": {"grid": 4}}
    q = effdnn.quantize(tiny_bert(), spec, batches(1))
    rows = q.effdnn_report["awq"]
    assert sum(len(r["layers"]) for r in rows) == 13
    assert all(r["awq_error"] <= r["rtn_error"] for r in rows)  # a = 0 is in the grid
    assert all((r["folded_into"] is None) == (r["awq_alpha"] == 0) for r in rows)  # a = 0: s = 1, nothing moves
    folded = [r for r in rows if r["folded_into"] not in ("explicit scale", None)]
    assert all(r["folded_into"].endswith("attention.self.value") for r in folded)  # post-LN: only value -> output
    x = batches(1, seed=7)[0]
    with torch.no_grad():
        ref = q(**x).last_hidden_state
        got = deploy_linears(q)(**x).last_hidden_state  # int4 codes; the explicit scales come along
    assert torch.allclose(got, ref, atol=1e-4 * float(ref.abs().max()))
    g = effdnn.quantize(tiny_bert(), {**spec, "method": "gptq"}, batches(1))
    assert len(g.effdnn_report["awq"]) == len(rows) and "gptq_error" in g.effdnn_report["ptq_layers"][0]
    with pytest.raises(EffdnnError, match="awq and smoothquant"):
        effdnn.quantize(tiny_bert(), {**spec, "method": "gptq", "smoothquant": 0.5}, batches(1))

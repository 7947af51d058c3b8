"""GPTQ (Frantar et al. 2023): the blockwise Cholesky solver matches a slow column-by-column OBS
reference, beats round-to-nearest on the layer objective, and runs inside effdnn.quantize."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.gptq import _quant, gptq_solve, reconstruction_error
from tests.quant.tiny_bert import batches, tiny_bert


def _layer(out: int, inp: int, rows: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    X = torch.randn(rows, inp, generator=g) @ torch.randn(inp, inp, generator=g) * 0.3  # correlated inputs
    H = 2 * X.t().double() @ X.double() / rows
    return W, H


def _grid(W: torch.Tensor, bits: int, group: int | None):
    qmax = 2 ** (bits - 1) - 1
    blocks = W.reshape(W.shape[0], -1, group or W.shape[1])
    s = (blocks.abs().amax(-1, keepdim=True) / qmax).expand_as(blocks).reshape(W.shape)
    return s, torch.zeros_like(s), -qmax - 1, qmax


def _reference(W, H, S, Z, qmin, qmax, damp, order):
    """Column by column with the explicit inverse Hessian and its Gaussian-elimination update
    (GPTQ eq. 2-3 / OBQ), no lazy batching, no Cholesky."""
    W, H = W.double().clone(), H.double().clone()
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for q in order:
        w = W[:, q].clone()
        Q[:, q] = _quant(w, S[:, q].double(), Z[:, q].double(), qmin, qmax)
        err = (w - Q[:, q]) / Hinv[q, q]
        W -= err[:, None] * Hinv[q][None, :]
        Hinv -= Hinv[:, q:q + 1] @ Hinv[q:q + 1, :] / Hinv[q, q]
    return Q


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_slow_reference(act_order: bool) -> None:
    W, H = _layer(6, 16, seed=3)
    S, Z, qmin, qmax = _grid(W, 3, 8)
    got = gptq_solve(W, H, S, Z, qmin, qmax, block_size=4, act_order=act_order, damp=0.01)
    order = torch.argsort(torch.diag(H), descending=True).tolist() if act_order else list(range(16))
    ref = _reference(W, H, S, Z, qmin, qmax, 0.01, order)
    # same grid points almost everywhere (float32 vs float64 can flip a tie), same objective
    assert (got.double() - ref).abs().le(1e-4).float().mean() >= 0.97
    assert reconstruction_error(W, got, H) == pytest.approx(reconstruction_error(W, ref.float(), H), rel=0.05)


@pytest.mark.parametrize("bits,group", [(4, 32), (3, None), (2, 32), (8, None)])
def test_gptq_beats_round_to_nearest(bits: int, group: int | None) -> None:
    W, H = _layer(64, 128)
    S, Z, qmin, qmax = _grid(W, bits, group)
    rtn = _quant(W, S, Z, qmin, qmax)
    q = gptq_solve(W, H, S, Z, qmin, qmax, block_size=32, act_order=True)
    assert torch.equal(_quant(q, S, Z, qmin, qmax), q)  # on the grid
    e_gptq, e_rtn = reconstruction_error(W, q, H), reconstruction_error(W, rtn, H)
    assert e_gptq < 0.75 * e_rtn, (e_gptq, e_rtn)


def test_gptq_in_quantize_on_tiny_bert() -> None:
    m, data = tiny_bert(), batches()
    spec = {"weight": {"bits": 4, "granularity": "per_group", "group_size": 32}}
    g = effdnn.quantize(m, {"method": "gptq", "act_order": True, **spec}, data)
    r = effdnn.quantize(m, {"method": "ptq", "act": None, **spec}, data)
    rows = [row for row in g.effdnn_report["ptq_layers"] if "gptq_error" in row]
    assert len(rows) == 13  # 6 Linear per layer x 2 + pooler
    assert all(row["gptq_error"] <= row["rtn_error"] + 1e-9 for row in rows)
    assert sum(row["gptq_error"] for row in rows) < 0.7 * sum(row["rtn_error"] for row in rows)
    assert g.effdnn_report["ptq_act"].startswith("float activations")
    with torch.no_grad():
        y = m(**data[0]).last_hidden_state
        eg = (g(**data[0]).last_hidden_state - y).pow(2).mean()
        er = (r(**data[0]).last_hidden_state - y).pow(2).mean()
    assert eg < er


@pytest.mark.parametrize("spec,msg", [
    ({"weight": {"bits": 9}}, "weight bits must be in 2..8"),
    ({"weight": {"bits": 1}}, "bits must be an integer in 2..16"),
    ({"weight": {"bits": 4, "granularity": "per_group", "group_size": 48}}, "group_size 48 does not divide its 64 inputs"),
    ({"weight": None}, "gptq quantizes int weights"),
])
def test_gptq_bad_specs(spec: dict, msg: str) -> None:
    with pytest.raises(EffdnnError, match=msg) as e:
        effdnn.quantize(tiny_bert(), {"method": "gptq", **spec}, batches(1))
    assert "\n" not in str(e.value)


def test_gptq_bad_models_and_batches() -> None:
    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(EffdnnError, match="no Linear layer"):
        effdnn.quantize(convs, {"method": "gptq", "weight": {"bits": 4}}, [torch.randn(2, 1, 8, 8)])
    with pytest.raises(EffdnnError, match="no Conv1d / Conv2d / Linear"):
        effdnn.quantize(nn.Sequential(nn.ReLU()), {"method": "gptq", "weight": {"bits": 4}}, [torch.randn(2, 3)])
    with pytest.raises(EffdnnError, match=r"calibration batch keys \['ids'\] are not arguments of BertModel.forward"):
        effdnn.quantize(tiny_bert(), {"method": "gptq", "weight": {"bits": 4}}, [{"ids": torch.zeros(2, 4, dtype=torch.long)}])

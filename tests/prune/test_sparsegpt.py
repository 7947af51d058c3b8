"""SparseGPT (Frantar & Alistarh 2023): the blocked Cholesky algorithm equals the slow sequential OBS
(explicit inverse-Hessian updates, one row and one column at a time) for the same mask; its
reconstruction error beats Wanda's and magnitude's masks; the recipe block prunes a model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.prune.sparsegpt import sparsegpt_solve


def _problem(out=6, cols=16, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64)
    X = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    W = torch.randn(out, cols, generator=g, dtype=torch.float64)
    return W, X, 2 * X.t() @ X / n


def _obs_reference(W, H, pruned, damp=0.01):
    """Sequential OBS: visit the columns in order; a pruned weight w_j moves the later weights by
    -w_j / Hinv_jj * Hinv[j, :] (Hinv the inverse Hessian of the columns not yet visited), then column j
    leaves the problem: Hinv <- Hinv - Hinv[:, j] Hinv[j, :] / Hinv_jj. Row by row, loop by loop."""
    Hd = H + damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    out = W.clone()
    for r in range(W.shape[0]):
        w, Hinv = W[r].clone(), torch.linalg.inv(Hd)
        for j in range(W.shape[1]):
            if pruned[r, j]:
                w = w - w[j] / Hinv[j, j] * Hinv[j]
                w[j] = 0.0
            Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
        out[r] = w
    return out


@pytest.mark.parametrize("block", [16, 5, 4])
def test_blocked_algorithm_equals_sequential_obs(block):
    W, _, H = _problem()
    pruned = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    got, keep = sparsegpt_solve(W, H, block_size=block, pruned=pruned)
    assert torch.equal(keep, ~pruned)
    assert torch.allclose(got, _obs_reference(W, H, pruned), atol=1e-9)


def _error(W, W_hat, X):
    return float(((W - W_hat) @ X.t()).pow(2).sum())


def test_reconstruction_error_beats_wanda_and_magnitude():
    W, X, H = _problem(out=16, cols=32, n=400)
    got, keep = sparsegpt_solve(W, H, sparsity=0.5, block_size=8)
    assert abs((~keep).double().mean().item() - 0.5) < 1e-9 and bool((got[~keep] == 0).all())
    norms = X.pow(2).sum(0).sqrt()
    wanda = W.abs() * norms
    wanda_keep = wanda >= wanda.median(dim=1, keepdim=True).values  # half of each row (Wanda's group)
    mag_keep = W.abs() >= W.abs().flatten().median()
    e = _error(W, got, X)
    assert e < 0.8 * _error(W, W * wanda_keep, X) and e < 0.8 * _error(W, W * mag_keep, X)


def test_nm_pattern_keeps_n_of_every_m():
    W, _, H = _problem(out=8, cols=16)
    _, keep = sparsegpt_solve(W, H, nm=(2, 4), block_size=8)
    assert bool((keep.reshape(8, -1, 4).sum(-1) == 2).all())
    with pytest.raises(EffdnnError, match="multiples"):
        sparsegpt_solve(W, H, nm=(2, 4), block_size=6)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("group", [None, 1])
def test_recipe_block_prunes_and_keeps_the_function_better_than_wanda(group):
    torch.manual_seed(0)
    model = MLP()
    data = [torch.randn(64, 16) @ torch.randn(16, 16) for _ in range(4)]
    x = torch.cat(data)
    ref = model(x).detach()
    sg = effdnn.prune(model, {"method": "sparsegpt", "sparsity": 0.5, "batches": 4, "group": group}, data)
    wd = effdnn.prune(model, {"method": "wanda", "sparsity": 0.5, "batches": 4}, data)
    for m in (sg.a, sg.b):
        assert (m.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    err = lambda m: float((m(x) - ref).pow(2).mean())
    assert err(sg) < err(wd)


def test_convolutions_are_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(EffdnnError, match=r"layer 0 is a Conv2d"):
        effdnn.prune(model, {"method": "sparsegpt", "sparsity": 0.5}, [torch.randn(4, 1, 8, 8)])

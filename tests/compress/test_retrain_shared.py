"""Deep Compression's centroid retraining (Han et al. 2016, section 3.3): codes fixed, zeros kept,
each centroid moved by the summed gradient of its cluster."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import effdnn
from effdnn.compress.container import Shared
from effdnn.compress.deep_compression import SharedValues


def test_centroid_gradient_is_the_grouped_sum() -> None:
    sh = Shared((2, 3), np.array([-1.0, 0.5], np.float32), np.array([0, 2, 3, 5]), np.array([1, 0, 1, 1]), 4)
    p = SharedValues(sh)
    codebook = torch.tensor([-1.0, 0.5], requires_grad=True)
    w = p(codebook)
    assert torch.equal(w, torch.tensor([[0.5, 0.0, -1.0], [0.5, 0.0, 0.5]]))
    g = torch.arange(6.0).reshape(2, 3) + 1  # dL/dw
    (w * g).sum().backward()
    # centroid 0 holds position 2 (g = 3); centroid 1 positions 0, 3, 5 (g = 1 + 4 + 6)
    assert torch.equal(codebook.grad, torch.tensor([3.0, 11.0]))


def _recipe(retrain: dict | None) -> dict:
    compress = {"method": "deep-compression", "bits": 3, "index_bits": 4}
    if retrain is not None:
        compress["retrain"] = retrain
    return {
        "name": "t", "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 128, "size": 12}},
        "model": {"name": "lenet5"},
        "baseline": {"epochs": 2, "lr": 0.003},
        "experiments": [{"name": "dc", "prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global"},
                         "finetune": {"epochs": 1, "lr": 0.001}, "compress": compress}],
    }


def _weights(path) -> dict[str, torch.Tensor]:
    from effdnn.compress.container import read_container

    _, tensors = read_container(path)
    return {k: v.dense() for k, v in tensors.items() if isinstance(v, Shared)}


def test_retraining_moves_centroids_and_keeps_codes_and_zeros(tmp_path) -> None:
    plain = effdnn.run(_recipe(None), out=tmp_path / "plain")["experiments"][0]
    tuned = effdnn.run(_recipe({"epochs": 2, "lr": 0.003}), out=tmp_path / "tuned")["experiments"][0]
    assert plain["accuracy_before_compress"] == tuned["accuracy_before_compress"]  # same pruned model
    assert tuned["container"]["accuracy_shared"] == pytest.approx(plain["accuracy"])  # k-means alone = the plain file
    a, b = _weights(plain["container"]["path"]), _weights(tuned["container"]["path"])
    assert a.keys() == b.keys() and len(a) == 5
    moved = 0
    for k in a:
        assert torch.equal(a[k] == 0, b[k] == 0), k  # the pruned positions stay zero
        assert len(torch.unique(b[k][b[k] != 0])) <= 8
        # the clusters are the same: two weights share a value after retraining iff they did before
        nz = a[k] != 0
        _, ca = torch.unique(a[k][nz], return_inverse=True)
        _, cb = torch.unique(b[k][nz], return_inverse=True)
        assert torch.equal(ca[:, None] == ca[None, :], cb[:, None] == cb[None, :]), k
        moved += int(not torch.equal(a[k], b[k]))
    assert moved == 5
    assert tuned["size_bytes"] == pytest.approx(plain["size_bytes"], rel=0.05)

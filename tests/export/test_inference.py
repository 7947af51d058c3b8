"""optimize_for_inference: strided max-pools and ReLUs moved after pooling give the same outputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import effdnn
from effdnn.export import StridedMaxPool2d
from effdnn.export.inference import strided_max_pool2d
from effdnn.models import build_model


@settings(max_examples=60, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), h=st.integers(4, 13), w=st.integers(4, 13),
       relu=st.booleans(), seed=st.integers(0, 2**16))
def test_strided_max_equals_max_pool(kh: int, kw: int, h: int, w: int, relu: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, w, generator=g)
    x[0, 0, 0, :] = x[0, 0, 1, 0]  # ties
    want = F.max_pool2d(F.relu(x) if relu else x, (kh, kw))
    got = strided_max_pool2d(x.clone(), (kh, kw), relu=relu)
    assert got.shape == want.shape and torch.equal(got, want)


def test_one_by_one_pool_with_relu_leaves_input_alone() -> None:
    x = torch.randn(1, 2, 4, 4)
    before = x.clone()
    assert torch.equal(strided_max_pool2d(x, (1, 1), relu=True), F.relu(before))
    assert torch.equal(x, before)


@pytest.mark.parametrize("variant", ["classic", "caffe"])
def test_lenet_outputs_identical_and_relu_moved(variant: str) -> None:
    torch.manual_seed(0)
    m = build_model("lenet5", 1, 10, (28, 28), variant=variant).eval()
    fast = effdnn.optimize_for_inference(m)
    pools = [p for p in fast.modules() if isinstance(p, StridedMaxPool2d)]
    assert len(pools) == 2 and not any(isinstance(p, nn.MaxPool2d) for p in fast.modules())
    # classic LeNet-5: conv -> ReLU -> pool, so both ReLUs move after their pooling; caffe has no conv ReLU
    assert [p.relu for p in pools] == [variant == "classic"] * 2
    assert sum(isinstance(p, nn.ReLU) for p in fast.features) == 0
    assert sum(isinstance(p, nn.MaxPool2d) for p in m.modules()) == 2  # the original is not touched
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(fast(x), m(x))


def test_channel_pruned_model_keeps_its_outputs() -> None:
    torch.manual_seed(0)
    m = build_model("lenet5", 1, 10, (28, 28)).eval()
    calib = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    pruned = effdnn.prune(m, {"method": "channel", "saliency": "l1", "sparsity": 0.4}, calib).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(effdnn.optimize_for_inference(pruned)(x), pruned(x))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                                  nn.MaxPool2d(2, dilation=2, stride=2), nn.MaxPool2d(2, return_indices=True)])
def test_other_pools_are_left_alone(pool: nn.Module) -> None:
    m = nn.Sequential(nn.ReLU(), pool)
    fast = effdnn.optimize_for_inference(m)
    assert type(fast[0]) is nn.ReLU and type(fast[1]) is nn.MaxPool2d


def test_hooked_relu_is_not_moved() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    seen = []
    m[1].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    fast = effdnn.optimize_for_inference(m)
    assert type(fast[1]) is nn.ReLU and isinstance(fast[2], StridedMaxPool2d) and not fast[2].relu
    x = torch.randn(2, 1, 10, 10)
    assert torch.equal(fast(x), m(x)) and len(seen) == 2

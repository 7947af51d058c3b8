"""Bit packing, XNOR + popcount against a +-1 matmul, packed inference equal to fake-quant inference,
storage from the real packed buffers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import effdnn
import effdnn.techniques  # noqa: F401
from effdnn.models import build_model
from effdnn.quant.bitpack import pack_bits, pack_words, packed_bytes, unpack_bits, xnor_popcount_matmul
from effdnn.quant.methods.binary import BinaryConv2d, BinaryLinear
from effdnn.quant.packed import PackedBinaryLayer, pack_model

METHODS = ["bc", "bnn", "bwn", "xnor", "twn", "ttq"]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 150), st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip(rows, k, seed):
    bits = torch.rand(rows, k, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(rows, k)
    assert torch.equal(unpack_bits(packed, k), bits)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 7), st.integers(1, 200), st.booleans(), st.integers(0, 2**31 - 1))
def test_xnor_popcount_equals_pm1_matmul(m, n, k, masked, seed):
    rng = np.random.default_rng(seed)
    a = rng.random((m, k)) > 0.5
    b = rng.random((n, k)) > 0.5
    valid = rng.random((m, k)) > 0.3 if masked else np.ones((m, k), dtype=bool)
    pa, pb = np.where(a, 1, -1) * valid, np.where(b, 1, -1)
    ref = pa @ pb.T
    got = xnor_popcount_matmul(pack_words(a), pack_words(b), k, pack_words(valid) if masked else None, chunk_bytes=64)
    assert np.array_equal(got, ref)


def _binarised(method, keep_fp=None):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 10, (28, 28))
    data = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    spec = {"method": method} if keep_fp is None else {"method": method, "keep_fp": keep_fp}
    return effdnn.Experiment(model, {"quantize": spec}, data=data).model.eval()  # bc / bnn: training hooks


@pytest.mark.parametrize("method", METHODS)
def test_packed_inference_equals_fake_quant(method):
    q = _binarised(method, keep_fp=[])  # every layer binary: conv1 (padding 2) exercises the padding mask
    p = pack_model(q)
    assert sum(isinstance(m, PackedBinaryLayer) for m in p.modules()) == 5
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        y, yp = q(x), p(x)
    assert torch.allclose(yp, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    assert torch.equal(yp.argmax(1), y.argmax(1))


@pytest.mark.parametrize("method", METHODS)
def test_storage_is_the_packed_buffers(method):
    q = _binarised(method)
    p = pack_model(q)
    fake = [m for m in q.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    packed = [m for m in p.modules() if isinstance(m, PackedBinaryLayer)]
    assert len(fake) == len(packed) > 0
    for f, pk in zip(fake, packed):
        assert f.effdnn_precision().storage_bits == pk.storage_bits() == pk.effdnn_precision().storage_bits
        n, k = f.weight.shape[0], f.weight[0].numel()
        planes = 2 if method in ("twn", "ttq") else 1
        code_bits = 8 * sum(t.numel() for t in (pk.sign_bits, pk.nonzero_bits) if t is not None)
        assert code_bits == planes * n * 8 * math.ceil(k / 8)  # 1 bit per binary weight, 2 per ternary
    x = torch.randn(4, 1, 28, 28)
    assert effdnn.cost(q, x).size_bytes == effdnn.cost(p, x).size_bytes


def test_storage_ratio_near_32x_binary_16x_ternary():
    model = nn.Sequential(nn.Linear(512, 512, bias=False), nn.ReLU(), nn.Linear(512, 256, bias=False))
    x = torch.randn(2, 512)
    fp = effdnn.cost(model, x).size_bytes
    bwn = effdnn.cost(effdnn.quantize(model, {"method": "bwn", "keep_fp": []}), x).size_bytes
    twn = effdnn.cost(effdnn.quantize(model, {"method": "twn"}), x).size_bytes
    assert fp / bwn == pytest.approx(32 * (512 * 768) / (512 * 768 + 32 * 768), rel=1e-6)  # less the alphas
    assert fp / twn == pytest.approx(16 * (512 * 768) / (512 * 768 + 32), rel=1e-6)  # one alpha per layer


def test_binary_layers_cost_one_bit_ops():
    q = _binarised("xnor")
    c = effdnn.cost(q, torch.randn(2, 1, 28, 28))
    binary = [l for l in c.layers if l.weight_bits == 1 and l.act_bits == 1]
    assert len(binary) == 3 and all(l.bitops == l.effective_macs for l in binary)

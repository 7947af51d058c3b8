"""The compiled binary kernels against the pure references: XNOR-popcount GEMM bit-exact with
``xnor_popcount_matmul``, the packed convolution equal to the unfold + numpy path over strides, paddings,
dilations and channel counts, sign-add exact on integer inputs, and the one-line fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import effdnn
import effdnn.techniques
from effdnn.quant import kernels
from effdnn.quant.bitpack import pack_words, xnor_matmul, xnor_popcount_matmul
from effdnn.quant.packed import PackedBinaryLayer, pack_model

needs_kernels = pytest.mark.skipif(kernels.lib() is None, reason="binary kernels unavailable (no compiler)")


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 21), st.integers(1, 19), st.integers(1, 2100), st.booleans(), st.integers(1, 2),
       st.integers(0, 2**31 - 1))
def test_xnor_matmul_bit_exact(m, n, k, masked, threads, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((m, k)) > 0.5, rng.random((n, k)) > 0.5
    mask = pack_words(rng.random((m, k)) > 0.3) if masked else None
    ref = xnor_popcount_matmul(pack_words(a), pack_words(b), k, mask)
    assert np.array_equal(xnor_matmul(pack_words(a), pack_words(b), k, mask, threads=threads), ref)


def _packed_layer(method, layer, shape, bn_seed=0):
    spec, data = {"quantize": {"method": method, "keep_fp": []}}, [torch.randn(shape)]
    q = effdnn.Experiment(nn.Sequential(layer), spec, data=data).model  # bnn: training hooks
    g = torch.Generator().manual_seed(bn_seed)
    for m in q.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # non-trivial BN before the sign
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    p = pack_model(q.eval())
    return q.eval(), next(m for m in p.modules() if isinstance(m, PackedBinaryLayer))


CONVS = [  # (cin, cout, kernel, stride, padding, dilation, bias, H, W)
    (16, 16, 3, 1, 1, 1, False, 12, 12), (3, 5, 3, 2, 1, 1, True, 9, 11), (13, 24, (5, 3), 1, (2, 1), 1, False, 10, 8),
    (70, 9, 3, 2, 0, 2, True, 13, 13), (32, 8, 1, 1, 0, 1, False, 7, 7), (8, 17, 3, (1, 2), 3, (2, 1), False, 6, 9),
]


@needs_kernels
@pytest.mark.parametrize("method", ["xnor", "bnn"])
@pytest.mark.parametrize("cfg", CONVS, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_conv_kernel_equals_reference(method, cfg, threads):
    cin, cout, ks, s, p, d, bias, h, w = cfg
    torch.manual_seed(1)
    x = torch.randn(3, cin, h, w)
    q, layer = _packed_layer(method, nn.Conv2d(cin, cout, ks, s, p, d, bias=bias), x.shape)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast, ref = layer(x), layer.forward_reference(x)
        fast_nhwc = layer(x.contiguous(memory_format=torch.channels_last))  # the NHWC packing
    finally:
        torch.set_num_threads(old)
    assert torch.allclose(fast_nhwc, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    if method == "bnn":  # no K map: the same integers times the same scale
        assert torch.equal(fast, ref)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    with torch.no_grad():
        assert torch.allclose(fast, q(x), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@needs_kernels
@pytest.mark.parametrize("method", ["xnor", "bnn"])
def test_packed_linear_kernel_equals_reference(method):
    torch.manual_seed(2)
    _, layer = _packed_layer(method, nn.Linear(300, 21), (7, 300))
    x = torch.randn(7, 300)
    fast, ref = layer(x), layer.forward_reference(x)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("method", ["bwn", "twn", "ttq"])
@pytest.mark.parametrize("conv", [False, True])
def test_sign_add_against_float_reference(method, conv):
    torch.manual_seed(3)
    mod = nn.Conv2d(6, 10, 3, 1, 1) if conv else nn.Linear(40, 10)
    x = torch.randint(-8, 9, (4, 6, 7, 7) if conv else (4, 40)).float()  # integer inputs
    q, layer = _packed_layer(method, mod, x.shape)
    fast, ref = layer(x), layer.forward_reference(x)
    with torch.no_grad():
        assert torch.allclose(fast, q(x), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    st_ = layer._fast_state()
    if st_["post"] is not None:  # one scale: the sums of selected inputs are exact integers
        w = st_["w"].double()
        sums = nn.functional.conv2d(x.double(), w, None, 1, 1) if conv else x.double() @ w.T
        assert torch.equal(sums, sums.round())
        post = st_["post"].double().reshape(1, -1, *([1, 1] if conv else []))
        b = 0 if layer.bias is None else layer.bias.double().reshape(1, -1, *([1, 1] if conv else []))
        assert torch.allclose(fast.double(), sums * post + b, rtol=1e-6, atol=1e-6)


def test_fallback_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("EFFDNN_NO_KERNELS", "1")
    monkeypatch.delitem(kernels._state, "lib", raising=False)
    with pytest.warns(RuntimeWarning, match="fast binary kernels unavailable .*EFFDNN_NO_KERNELS"):
        assert kernels.lib() is None
    assert kernels.isa() == "numpy reference"
    a, b = np.ones((2, 70), bool), np.zeros((3, 70), bool)
    assert np.array_equal(xnor_matmul(pack_words(a), pack_words(b), 70), np.full((2, 3), -70))
    torch.manual_seed(4)
    _, layer = _packed_layer("xnor", nn.Conv2d(4, 4, 3, 1, 1), (2, 4, 5, 5))
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), layer.forward_reference(x))
    monkeypatch.delitem(kernels._state, "lib")  # the next caller builds / loads again

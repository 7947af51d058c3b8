"""The folded epilogues of packed binary convolutions (packed_fuse) against the reference path, which
runs the folded BatchNorm / ReLU / residual add / input ReLU as separate torch ops: outputs within float rounding,
the same argmax, for BatchNorms with negative gammas; the packed-bits hand-off between two binary
convolutions bit-exact against the float hand-off."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
import effdnn.techniques
from effdnn.models import build_model
from effdnn.quant import kernels
from effdnn.quant.packed import PackedBinaryLayer, pack_model

needs_kernels = pytest.mark.skipif(kernels.lib() is None, reason="binary kernels unavailable (no compiler)")


def _xnor(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    q = effdnn.Experiment(model, {"quantize": {"method": "xnor"}}, data=[torch.randn(shape)]).model.eval()
    g = torch.Generator().manual_seed(1)
    for m in q.modules():  # non-trivial statistics, gammas of both signs
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return q


def _reference(p: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every packed layer through forward_reference (unfold + numpy XNOR-popcount, then torch's ops)."""
    layers = [m for m in p.modules() if isinstance(m, PackedBinaryLayer)]
    for m in layers:
        m.forward = m.forward_reference
    try:
        return p(x)
    finally:
        for m in layers:
            del m.forward


MODELS = [("resnet", {"depth": 8, "width": 8}, (10, 10)), ("vgg-small", {"width": 0.0625}, (12, 12))]


@needs_kernels
@pytest.mark.parametrize("name,kw,size", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_model_equals_reference_path(name, kw, size, threads):
    x = torch.randn(8, 1, *size, generator=torch.Generator().manual_seed(2))
    q = _xnor(build_model(name, 1, 10, size, **kw), x.shape)
    p = pack_model(q)
    layers = [m for m in p.modules() if isinstance(m, PackedBinaryLayer)]
    assert all(m.post_relu or hasattr(m, "post_bn_running_mean") for m in layers)  # every epilogue folded
    assert sum(m.__dict__.get("_next") is not None for m in layers) >= 2  # packed-bits hand-offs
    # the first layer's ReLU: read by the binary convolution alone (VGG), or also by the residual (ResNet)
    assert layers[0].pre_relu == (name == "vgg-small")
    if name == "resnet":  # the residual joins folded on the fx graph
        assert isinstance(p, torch.fx.GraphModule) and sum(m.residual_relu is not None for m in layers) == 3
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast, ref, fq = p(x), _reference(p, x), q(x)
    finally:
        torch.set_num_threads(old)
    tol = 1e-4 * float(ref.abs().max())  # float32 rounding of the folded affine maps
    assert torch.allclose(fast, ref, rtol=1e-4, atol=tol) and torch.equal(fast.argmax(1), ref.argmax(1))
    assert torch.allclose(fast, fq, rtol=1e-4, atol=tol)


@needs_kernels
def test_packed_handoff_bit_exact_against_float_handoff():
    """Channels in multiples of 8: the producer's bits and K map are the consumer's own packing of the
    float output, operation for operation."""
    x = torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(3))
    seq = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                        nn.Conv2d(24, 8, 3, 1, 2, dilation=2, bias=False))
    q = effdnn.Experiment(seq, {"quantize": {"method": "xnor", "keep_fp": []}}, data=[x]).model.eval()
    p = pack_model(q)
    first, second, _ = [m for m in p.modules() if isinstance(m, PackedBinaryLayer)]
    assert first.__dict__["_next"] is second and second.__dict__["_next"] is not None
    with torch.no_grad():
        packed = p(x)
        h = first.register_forward_hook(lambda *a: None)  # observed: float outputs
        floats = p(x)
        h.remove()
    assert torch.equal(packed, floats)


def test_unfused_chains_stay_separate():
    """A BatchNorm whose input has another reader is not folded; pack_model(fuse=False) folds nothing."""

    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0, self.conv = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.bn, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(self.conv0(x))
            return self.conv2(self.bn(y)) + y

    x = torch.randn(2, 4, 6, 6)
    q = effdnn.Experiment(TwoReaders(), {"quantize": {"method": "xnor", "keep_fp": []}}, data=[x]).model.eval()
    p = pack_model(q)
    assert isinstance(p.bn, nn.BatchNorm2d) and not hasattr(p.conv, "post_bn_running_mean")
    assert not any(hasattr(m, "post_bn_running_mean") for m in pack_model(_xnor(build_model(
        "vgg-small", 1, 10, (8, 8), width=0.0625), (2, 1, 8, 8)), fuse=False).modules())
    with torch.no_grad():
        assert torch.allclose(p(x), q(x), rtol=1e-4, atol=1e-4 * float(q(x).abs().max()))

"""The native fp8 path (torch._scaled_mm): on CPU (torch's CPU build has _scaled_mm) and, where a GPU
with fp8 tensor cores is present, on CUDA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from effdnn import cost
from effdnn.lowp.fp8_native import Fp8Conv2d, Fp8Linear, convert_native_fp8, fp8_available, fp8_mm, to_fp8

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and fp8_available(torch.device("cuda")) else [])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_mm_equals_float_product_of_the_rounded_operands(device):
    """The product of the fp8 operands, accumulated in float32 on the CPU (odd sizes: the CUDA path pads to
    multiples of 16). H100 fp8 tensor cores accumulate more coarsely (seen: 3.6e-3 relative at K = 70)."""
    a, b = torch.randn(37, 70, device=device), torch.randn(21, 70, device=device)
    y = fp8_mm(a, b, torch.float8_e4m3fn, torch.float8_e5m2)
    qa, sa = to_fp8(a, torch.float8_e4m3fn)
    qb, sb = to_fp8(b, torch.float8_e5m2)
    ref = (qa.double() * sa.double()) @ (qb.double() * sb.double()).t()
    assert y.shape == (37, 21) and y.dtype == torch.float32
    tol = 1e-2 if device == "cuda" else 1e-5
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_to_fp8_scales_amax_to_the_format_max():
    x = torch.tensor([0.5, -2.0, 1.0])
    q, inv = to_fp8(x, torch.float8_e4m3fn)
    assert float(q.float().abs().max()) == torch.finfo(torch.float8_e4m3fn).max
    torch.testing.assert_close(q.float() * inv, x)  # these values are exact in e4m3 after scaling


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_layers_forward_and_gradients_close_to_float(device):
    torch.manual_seed(0)
    for ref in (nn.Linear(48, 40), nn.Conv2d(3, 8, 3, padding=1, stride=2)):
        ref = ref.to(device)
        layer = type(ref)(*([48, 40] if isinstance(ref, nn.Linear) else [3, 8, 3]),
                          **({} if isinstance(ref, nn.Linear) else {"padding": 1, "stride": 2})).to(device)
        layer.load_state_dict(ref.state_dict())
        convert_native_fp8(layer)
        assert isinstance(layer, (Fp8Linear, Fp8Conv2d))
        x = torch.randn(64, 48, device=device) if isinstance(ref, nn.Linear) else torch.randn(4, 3, 9, 9, device=device)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y = ref(x1), layer(x2)
        assert y.shape == y_ref.shape
        assert _rel(y, y_ref) < 0.06  # e4m3: 3 mantissa bits, relative step 2^-4
        g = torch.randn_like(y)
        y_ref.backward(g)
        y.backward(g)
        assert _rel(x2.grad, x1.grad) < 0.12  # e5m2 errors: 2 mantissa bits
        assert _rel(layer.weight.grad, ref.weight.grad) < 0.12
        torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_convert_native_fp8_skips_named_and_unsupported_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    assert convert_native_fp8(model, skip={"3"}) == ["0"]
    assert type(model[1]) is nn.Conv2d and type(model[3]) is nn.Linear


def test_fp8_layers_state_their_precision_and_macs():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x = torch.randn(2, 1, 8, 8)
    dense = cost(model, x).macs
    convert_native_fp8(model)
    c = cost(model, x)
    assert c.macs == dense
    assert c.size_bytes < cost(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)), x).size_bytes

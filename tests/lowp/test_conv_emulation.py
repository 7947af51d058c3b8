"""Every kind of convolution, emulated: bit-exact against the scalar reference (tests/lowp/conv_reference.py)
in forward and in all three gradients; float32 policies equal torch's layers; in-place ops after a layer."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from effdnn.formats.float import FP8_152, FP8_E4M3, FP16_169
from effdnn.lowp.gemm import CLASSES, GemmPolicy, convert_layers
from tests.lowp.conv_reference import reference_conv

# (layer, input shape): groups / depthwise, stride, dilation, every padding mode, 'same' / 'valid'
# (odd totals: asymmetric), Conv1d / Conv3d, transposed with output_padding, groups, dilation and crop
CASES = {
    "grouped": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 5, 5)),
    "depthwise": (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), (2, 3, 4, 4)),
    "depthwise_x2": (lambda: nn.Conv2d(2, 4, (3, 2), stride=(1, 2), groups=2), (1, 2, 5, 6)),
    "reflect_same_dilated": (lambda: nn.Conv2d(2, 3, (3, 2), padding="same", dilation=2, padding_mode="reflect"), (2, 2, 5, 6)),
    "replicate": (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=(2, 1), padding_mode="replicate"), (1, 2, 5, 4)),
    "circular": (lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular", dilation=(1, 2)), (1, 2, 4, 5)),
    "valid": (lambda: nn.Conv2d(3, 2, 2, padding="valid", dilation=2), (2, 3, 5, 5)),
    "conv1d_same": (lambda: nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect"), (2, 3, 7)),
    "conv1d_strided": (lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1, groups=2), (2, 2, 9)),
    "conv1d_replicate": (lambda: nn.Conv1d(2, 2, 3, padding=2, padding_mode="replicate", dilation=2), (1, 2, 6)),
    "conv1d_circular": (lambda: nn.Conv1d(2, 2, 2, stride=2, padding=1, padding_mode="circular"), (2, 2, 5)),
    "conv3d_reflect_same": (lambda: nn.Conv3d(2, 2, (3, 2, 3), padding="same", padding_mode="reflect"), (1, 2, 3, 3, 4)),
    "conv3d": (lambda: nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=1, groups=2, padding_mode="circular"), (1, 2, 3, 4, 3)),
    "transposed1d": (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4)),
    "transposed2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=(1, 0), groups=2, dilation=(1, 2)), (1, 4, 3, 3)),
    "transposed2d_crop": (lambda: nn.ConvTranspose2d(2, 2, 2, stride=3, padding=2, bias=False), (2, 2, 3, 3)),
    "transposed3d": (lambda: nn.ConvTranspose3d(2, 2, 2, stride=(2, 1, 2), output_padding=(1, 0, 0)), (1, 2, 2, 3, 2)),
}
FP8 = GemmPolicy(weight=FP8_E4M3, act=FP8_E4M3, grad=FP8_152, out=FP16_169, acc=FP16_169, chunk=4)
FP8_SEQ = GemmPolicy(weight=FP8_152, act=FP8_152, grad=FP8_152, out=FP16_169, acc=FP16_169, chunk=None)


def _emulated(layer: nn.Module, policy: GemmPolicy) -> nn.Module:
    emu = copy.deepcopy(layer)
    convert_layers(nn.Sequential(emu), lambda *_: policy)
    assert type(emu) is CLASSES[type(layer)]
    return emu


def _run(emu: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = emu(x)
    y.backward(gy)
    out = {"y": y.detach(), "gx": x.grad, "gw": emu.weight.grad}
    if emu.bias is not None:
        out["gb"] = emu.bias.grad
    return out


@pytest.mark.parametrize("policy", [FP8, FP8_SEQ], ids=["fp8_chunk4", "fp8_sequential"])
@pytest.mark.parametrize("case", list(CASES))
def test_emulated_conv_equals_scalar_reference_bit_for_bit(case, policy):
    make, shape = CASES[case]
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape) * 2
    emu = _emulated(layer, policy)
    y_shape = layer(x).shape  # torch's own layer fixes the output shape
    gy = torch.randn(y_shape)
    got = _run(emu, x, gy)
    want = reference_conv(layer, x, gy, policy)
    assert got["y"].shape == y_shape
    for key in want:
        assert torch.equal(got[key], want[key].float()), (key, (got[key] - want[key]).abs().max())


@pytest.mark.parametrize("case", list(CASES))
def test_float32_policy_equals_torch(case):
    make, shape = CASES[case]
    torch.manual_seed(1)
    layer = make()
    x, emu = torch.randn(shape), _emulated(layer, GemmPolicy())
    y_ref = layer(x.clone().requires_grad_(True))
    gy = torch.randn_like(y_ref)
    got, want = _run(emu, x, gy), _run(layer, x, gy)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_unbatched_input_and_output_size():
    conv = _emulated(nn.Conv1d(2, 3, 3, padding=1), GemmPolicy())
    assert conv(torch.randn(2, 7)).shape == (3, 7)
    tconv = nn.ConvTranspose2d(2, 2, 3, stride=2)
    emu = _emulated(tconv, GemmPolicy())
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(emu(x, output_size=[10, 10]), tconv(x, output_size=[10, 10]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer,shape", [(nn.Conv2d(2, 1, 3), (1, 2, 3, 3)), (nn.Conv2d(2, 3, 1), (2, 2, 1, 1)),
                                         (nn.Linear(4, 3), (2, 5, 4)), (nn.Linear(4, 1), (2, 4)),
                                         (nn.ConvTranspose1d(1, 1, 1), (1, 1, 1))])
@pytest.mark.parametrize("policy", [GemmPolicy(), FP8], ids=["fp32", "fp8"])
def test_inplace_op_after_an_emulated_layer(layer, shape, policy):
    """alexnet / vgg / squeezenet: ``nn.ReLU(inplace=True)`` after an emulated layer whose output would
    otherwise be a view (one output channel, 1x1 maps)."""
    emu = _emulated(layer, policy)
    x = torch.randn(shape, requires_grad=True)
    model = nn.Sequential(emu, nn.ReLU(inplace=True))
    y = model(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

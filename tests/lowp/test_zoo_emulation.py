"""Small torchvision models (grouped / depthwise convs, squeeze-excitation, in-place ReLU after convs,
1x1 maps) converted for every emulated precision: every Linear / convolution converted and run through
the emulation, one training step with a finite loss. Needs the ``zoo`` extra (torchvision)."""
from __future__ import annotations

import copy

import pytest
import torch

from effdnn.formats import float_bits
from tests.lowp.zoo import MODES, convert, converted, gemm_count, one_step

tv = pytest.importorskip("torchvision")  # the shim in tests/conftest.py lets it import with the CPU torch

# each at 32x32 (the smallest input each allows here), batch 2
MODELS = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf", "squeezenet1_0", "efficientnet_b0"]


@pytest.fixture(scope="module")
def zoo() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: tv.models.get_model(name, num_classes=10) for name in MODELS}


def _step(model: torch.nn.Module, mode: str) -> float:
    want = gemm_count(model)
    float_bits.set_compile(False)  # small tensors: the eager rounding kernels (no compile time)
    try:
        loss = one_step(model, convert(model, mode), size=32)
    finally:
        float_bits.set_compile(True)
    layers = converted(model)
    assert len(layers) == want > 0  # every Linear / convolution converted
    assert [n for n, m in layers if m.lowp_calls == 0] == []  # ... and run through the emulation
    return loss


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_trains_one_step_emulated(zoo, name, mode):
    """Each mode with the precision block's defaults (fp8 / hfp8: FP16 (1,6,9) chunked accumulation,
    CL = 64, FP16 edge layers, stochastic rounding of the FP16 weights; fp16: dynamic loss scaling)."""
    loss = _step(copy.deepcopy(zoo[name]), mode)
    assert torch.isfinite(torch.tensor(loss))

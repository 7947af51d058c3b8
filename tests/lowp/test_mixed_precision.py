"""Loss scaling: skip on injected overflow, back off and grow; underflow without scaling; the precision block."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effdnn.techniques  # noqa: F401
from effdnn.errors import EffdnnError
from effdnn.formats.float import FP16, FP16_169
from effdnn.lowp.fp8_training import RoundWeightsCallback
from effdnn.lowp.gemm import GemmPolicy, LowpStats, convert_layers
from effdnn.lowp.mixed_precision import DynamicLossScaler, LossScaleCallback
from effdnn.registry import PRECISION


def _model(stats=None):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    policy = GemmPolicy(FP16, FP16, FP16, FP16)
    return convert_layers(m, lambda *_: policy, stats)


def test_overflow_skips_the_step_backs_off_and_growth_resumes():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    cb = LossScaleCallback(scaler)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    inject = {"on": False}
    model[2].weight.register_hook(lambda g: g * math.inf if inject["on"] else g)
    taken = []
    for step in range(5):
        inject["on"] = step == 2
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad(set_to_none=True)
        taken.append(cb.backward_step(F.cross_entropy(model(x), y), model, opt))
        if step == 2:
            assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # skipped: no update
    assert taken == [True, True, False, True, True]
    # 1024 -> grow after 2 good steps (2048) -> overflow halves (1024) -> 2 good steps grow again (2048)
    assert scaler.scale == 2048.0 and scaler.overflows == 1 and scaler.growths == 2
    rep = cb.report()
    assert rep["loss_scale_overflows"] == 1 and rep["loss_scale_final"] == 2048.0 and rep["skipped_steps"] == 1


def test_real_fp16_overflow_of_a_huge_scale_is_detected():
    """With S = 2^40 the scaled errors exceed fp16's 65504: inf in the emulated backward, step skipped."""
    stats = LowpStats()
    model = _model(stats)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = LossScaleCallback(DynamicLossScaler(init_scale=2.0**40), stats)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    assert cb.backward_step(F.cross_entropy(model(x), y), model, opt) is False
    assert cb.scaler.scale == 2.0**39 and stats.grad_overflow > 0


def test_loss_scaling_rescues_underflowing_gradients():
    """A loss of order 1e-8 has fp16 errors below 2^-24: all zero unscaled, recovered with S = 2^16."""
    grads = {}
    for scale in (1.0, 2.0**16):
        stats = LowpStats()
        model = _model(stats)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        cb = LossScaleCallback(DynamicLossScaler(init_scale=scale, dynamic=False), stats)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        cb.backward_step(F.cross_entropy(model(x), y) * 1e-8, model, opt)
        grads[scale] = (model[0].weight.grad.abs().sum().item(), stats.as_dict()["grad_underflow_frac"])
    assert grads[1.0][0] == 0.0 and grads[1.0][1] == 1.0
    assert grads[2.0**16][0] > 0 and grads[2.0**16][1] < 0.5


def test_stochastic_weight_updates_keep_small_updates():
    """Updates of 1e-4 on weights near 1 are below half an FP16 (1,6,9) ulp (2^-10): round-to-nearest
    loses all of them, stochastic rounding keeps them in expectation (Wang et al. 2018, section 4)."""
    final = {}
    for rounding in ("nearest", "stochastic"):
        model = nn.Linear(64, 64, bias=False)
        nn.init.constant_(model.weight, 1.0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        cb = RoundWeightsCallback(FP16_169, rounding)
        cb.on_fit_start(model, opt)
        for _ in range(200):
            model.weight.grad = -torch.ones_like(model.weight)
            opt.step()
            cb.after_step(model, opt)
        final[rounding] = model.weight.mean().item()
    assert final["nearest"] == 1.0
    assert abs(final["stochastic"] - 1.02) < 0.002  # 200 * 1e-4, up to the spread of 4096 weights


def test_precision_block_configs():
    cfg = PRECISION.parse({"train": "fp8", "accumulate": "fp16", "chunk": 64, "rounding": "stochastic"})
    assert cfg.chunk == 64 and cfg.loss_scale == "dynamic"
    assert PRECISION.parse({"train": "bf16"}).loss_scale == "none"
    assert PRECISION.parse({"train": "hfp8"}).train == "hfp8"
    with pytest.raises(EffdnnError, match="chunk"):
        PRECISION.parse({"train": "fp8", "chunk": -1})
    with pytest.raises(EffdnnError, match="unknown key"):
        PRECISION.parse({"train": "fp16", "chunk": 64})
    with pytest.raises(EffdnnError, match="unknown precision method"):
        PRECISION.parse({"train": "fp4"})


def test_grad_scaler_callback_skips_the_step_on_injected_overflow_on_the_cpu():
    """The native path's callback on torch.amp.GradScaler("cpu"): an inf loss skips the step, halves the scale."""
    from effdnn.lowp.mixed_precision import GradScalerCallback

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = GradScalerCallback(init_scale=2.0**16, growth_interval=1, device="cpu")
    before = model.weight.detach().clone()
    assert cb.backward_step(model(torch.full((3, 4), float("inf"))).sum(), model, opt) is False
    assert torch.equal(model.weight, before)
    assert cb.report()["loss_scale_overflows"] == 1 and cb.report()["loss_scale_final"] == 2.0**15
    opt.zero_grad()  # as the training loop does before each step
    assert cb.backward_step(model(torch.ones(3, 4)).sum(), model, opt) is True  # a good step grows it back
    assert not torch.equal(model.weight, before) and cb.report()["loss_scale_final"] == 2.0**16

"""CUDA paths, run where a GPU is present (CI has none: these skip there; the CPU paths are tested
everywhere). Float emulation on the GPU (torch.compile -> Triton) bit-exact with torch's casts, unbiased
stochastic rounding, and the native precision backends (autocast + GradScaler, fp8 tensor cores)."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.formats import float_bits
from effdnn.formats.float import FP8_E5M2, PRESETS, TORCH_DTYPES
from tests.formats.test_float import assert_bit_exact, low_probes, sweep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def kernels(request):
    float_bits.set_compile(request.param)
    yield request.param
    float_bits.set_compile(False)


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_round_to_nearest_on_cuda_is_bit_exact_with_torch_casts(kernels, name):
    """Every target pattern in every float32 binade (ties, near-ties) and random float32 bit patterns
    (NaN, inf, subnormals), rounded on the GPU, against torch's CUDA cast."""
    fmt, dtype = PRESETS[name], TORCH_DTYPES[name]
    keep = 1 + 8 + fmt.man_bits
    gen = torch.Generator().manual_seed(1)
    raw = torch.randint(-2**31, 2**31 - 1, (1 << 20,), dtype=torch.int32, generator=gen).view(torch.float32)
    for x in (sweep(keep, low_probes(32 - keep)).cuda(), raw.cuda()):
        ref = x.to(dtype).to(torch.float32)
        if fmt.saturate:  # torch's CUDA cast overflows to NaN where its CPU cast (and the format) saturate
            over = torch.isnan(ref) & ~torch.isnan(x)
            assert bool(over.any()) and bool((x[over].abs() > fmt.max_value).all())
            ref = torch.where(over, torch.sign(x) * fmt.max_value, ref)
        assert_bit_exact(fmt.round(x), ref)
        x, ref = x[~torch.isnan(x)], ref[~torch.isnan(x)]  # NaN payloads differ
        codes = fmt.encode(x)
        assert torch.equal(codes, ref.to(dtype).view(codes.dtype))


def test_stochastic_rounding_on_cuda_is_unbiased(kernels):
    x = torch.full((1 << 22,), 1.0 + 2.0**-4, device="cuda")  # a quarter of the way between e5m2 neighbours
    y = FP8_E5M2.round(x, rounding="stochastic")
    assert set(y.unique().tolist()) == {1.0, 1.25}
    assert abs(float(y.double().mean()) - float(x[0])) < 3e-4  # std of the mean ~ 0.25 * 0.43 / 2048


def _recipe(tmp_path, experiments):
    return {"name": "cuda-lowp", "seed": 0, "device": "cuda",
            "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 512, "n_test": 256}},
            "model": {"name": "mlp"}, "baseline": {"epochs": 1, "optimizer": "adam", "lr": 0.01},
            "experiments": experiments, "output": str(tmp_path / "run")}


def test_native_precision_backends_train_on_cuda(tmp_path):
    ft = {"epochs": 3, "optimizer": "adam", "lr": 0.01}
    exps = [{"name": n, "precision": {"train": n, "backend": "native", "step_time_batches": 2}, "finetune": ft}
            for n in ("fp16", "bf16", "fp8", "hfp8")]
    rep = effdnn.run(_recipe(tmp_path, exps))
    for row in rep["experiments"]:
        assert row["accuracy"] > 0.5, row["name"]  # 4 separable classes: chance 0.25
        assert row["step_time_ratio_fp32"] > 0
    fp16 = rep["experiments"][0]
    assert fp16["loss_scale_final"] > 0


def test_grad_scaler_callback_skips_the_step_on_injected_overflow():
    from effdnn.lowp.mixed_precision import GradScalerCallback

    model = torch.nn.Linear(4, 2).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = GradScalerCallback(init_scale=2.0**16, growth_interval=1)
    before = model.weight.detach().clone()
    loss = model(torch.full((3, 4), float("inf"), device="cuda")).sum()
    cb.backward_step(loss, model, opt)
    assert torch.equal(model.weight, before)  # skipped
    rep = cb.report()
    assert rep["loss_scale_overflows"] == 1 and rep["loss_scale_final"] == 2.0**15

"""The precision block end to end through the runner: fresh training, report fields, bad input."""
from __future__ import annotations

import pytest

import effdnn
from effdnn.errors import EffdnnError


def _recipe(tmp_path, experiments, baseline=None):
    return {
        "name": "lowp-test", "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 128}},
        "model": {"name": "mlp"},
        "baseline": baseline or {"epochs": 2, "optimizer": "adam", "lr": 0.01},
        "experiments": experiments, "output": str(tmp_path / "run"),
    }


def test_precision_experiments_train_from_scratch_and_report(tmp_path):
    ft = {"epochs": 2, "optimizer": "adam", "lr": 0.01}
    rep = effdnn.run(_recipe(tmp_path, [
        {"name": "fp16", "precision": {"train": "fp16", "step_time_batches": 1}, "finetune": ft},
        {"name": "fp8", "precision": {"train": "fp8", "chunk": 16, "step_time_batches": 1}, "finetune": ft},
        {"name": "bf16-baseline-settings", "precision": {"train": "bf16", "step_time_batches": 0}},
    ]))
    fp16, fp8, bf16 = rep["experiments"]
    for row in (fp16, fp8, bf16):
        assert row["accuracy"] > 0.5  # 4 well-separated classes: chance is 0.25
    assert fp16["loss_scale_final"] > 0 and fp16["loss_scale_overflows"] >= 0 and fp16["step_time_ratio_fp32"] > 0
    assert 0 <= fp16["grad_underflow_frac"] <= 1
    assert fp8["weight_update_rounding"] == "stochastic" and fp8["weight_format"] == "fp16_169"
    assert fp8["precision"] == "fp8" and fp8["techniques"]["precision"]["chunk"] == 16
    assert fp8["size_bytes"] < fp16["size_bytes"]  # 8-bit weights in the middle layers
    assert bf16["epoch_time_s"] > 0 and "step_time_ratio_fp32" not in bf16  # trained with the baseline block


def test_precision_needs_training_settings(tmp_path):
    ckpt = tmp_path / "w.pt"
    import torch

    from effdnn.models import build_model

    torch.save(build_model("mlp", 1, 4, (8, 8)).state_dict(), ckpt)
    with pytest.raises(EffdnnError, match="finetune"):
        effdnn.run(_recipe(tmp_path, [{"name": "x", "precision": {"train": "fp16", "step_time_batches": 0}}],
                           baseline={"checkpoint": str(ckpt)}))


def test_cost_model_counts_emulated_gemms():
    """The chunked-accumulation loops are shown to the cost model as the GEMM they emulate."""
    import torch
    from torch import nn

    from effdnn import cost
    from effdnn.formats.float import FP16_169
    from effdnn.lowp.fp8_training import fp8_policies
    from effdnn.lowp.gemm import convert_layers

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    dense = cost(model, torch.randn(2, 8)).macs
    convert_layers(model, fp8_policies("fp8", FP16_169, 4))
    c = cost(model, torch.randn(2, 8))
    assert c.macs == dense


def test_native_mixed_precision_runs_autocast_and_grad_scaler_on_the_cpu(tmp_path):
    """backend: native for fp16 / bf16 is torch.autocast + torch.amp.GradScaler, on the CPU too: the
    GEMMs run in the half type (the hook sees it), the loss scale is GradScaler's, the state dict is plain."""
    import torch

    ft = {"epochs": 2, "optimizer": "adam", "lr": 0.01}
    rep = effdnn.run(_recipe(tmp_path, [
        {"name": n, "precision": {"train": n, "backend": "native", "step_time_batches": 1}, "finetune": ft}
        for n in ("fp16", "bf16")]))
    fp16, bf16 = rep["experiments"]
    for row in (fp16, bf16):
        assert row["accuracy"] > 0.5
    assert fp16["loss_scale_final"] > 0 and fp16["skipped_steps"] >= 0 and fp16["optimizer_steps"] == 16
    assert "grad_underflow_frac" not in fp16  # the emulation's counters belong to the emulated path

    from effdnn.lowp.mixed_precision import attach_autocast
    from effdnn.models import build_model

    seen = []
    model = attach_autocast(build_model("mlp", 1, 4, (8, 8)), "cpu", torch.float16)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert model(torch.randn(2, 1, 8, 8)).dtype == torch.float32 and seen == [torch.float16]


def test_native_fp8_still_needs_cuda(tmp_path):
    ft = {"epochs": 1, "optimizer": "adam", "lr": 0.01}
    with pytest.raises(EffdnnError, match="native fp8 needs a CUDA device"):
        effdnn.run(_recipe(tmp_path, [{"name": "x", "precision": {"train": "fp8", "backend": "native"}, "finetune": ft}]))

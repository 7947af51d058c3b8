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

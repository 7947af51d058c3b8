"""QAT under torchrun (2 CPU processes, gloo) reaches the learned ranges, observers and weights of 1 process.

The 1-process run trains the baseline; the 2-process run starts from that checkpoint (a BatchNorm net
trained under DDP sees per-rank batch statistics, so its own baseline would differ). Then each QAT
method fine-tunes with the same global batches: LSQ steps and PACT clips are parameters (gradients
averaged by DDP), EMA activation ranges and folded-BN batch statistics are all-reduced over the ranks.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "quant" / "ddp_qat_worker.py"
# SGD: Adam's first steps move every weight by ~lr whatever the gradient's size, so a gradient that is
# 1e-9 in one run and -1e-9 in the other (summation order) would move a weight by 2 lr apart
FINETUNE = {"epochs": 2, "optimizer": "sgd", "lr": 0.05, "schedule": "none"}
RECIPE = {
    "name": "ddp-qat",
    "seed": 0,
    "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 256, "noise": 2.0}},
    "model": {"name": "resnet", "kwargs": {"depth": 8, "width": 4}},
    "baseline": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "schedule": "none"},
    "experiments": [
        {"name": "qat-ema", "quantize": {"method": "qat", "weight": {"bits": 4, "granularity": "per_channel"},
                                         "act": {"bits": 4}, "bn_freeze_epoch": 1}, "finetune": FINETUNE},
        # 4 bits: on a 3-bit grid a summation-order difference of 1e-7 flips some activation code within
        # the 16 steps (seen with an EMA input range: W3A3 differs by 1e-2, W4A4 matches to 1e-3)
        {"name": "lsq", "quantize": {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4}}, "finetune": FINETUNE},
        {"name": "pact", "quantize": {"method": "pact", "weight": {"bits": 4}, "act": {"bits": 4}}, "finetune": FINETUNE},
        {"name": "kmeans", "quantize": {"method": "qat", "weight": {"format": "kmeans", "bits": 3}, "act": None},
         "finetune": FINETUNE},
    ],
}
LEARNED = (".step", ".alpha", ".lo", ".hi", ".codebook", "running_mean", "running_var")


def _run(cmd, cwd, env):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _close(a: dict, b: dict, tol: float, what: str) -> None:
    """Equal within ``tol`` relative (+ tol / 10 absolute): 1e-3 lets float summation order differ
    (two half-batch gradients averaged vs one) but not a single flipped code (one quantization step)."""
    assert a.keys() == b.keys(), what
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=tol, atol=tol / 10), f"{what}: {k} differs by {(a[k] - b[k]).abs().max()}"
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.mark.slow
def test_two_process_qat_equals_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EFFDNN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(RECIPE))
    _run([sys.executable, str(WORKER), "one.yaml", "one"], tmp_path, env)
    two = {**RECIPE, "baseline": {**RECIPE["baseline"], "checkpoint": str(tmp_path / "one/baseline/model.pt")}}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(WORKER), "two.yaml", "two"], tmp_path, env)

    rep1 = yaml.safe_load((tmp_path / "one/report.json").read_text())
    rep2 = yaml.safe_load((tmp_path / "two/report.json").read_text())
    assert rep2["environment"]["world_size"] == 2
    for e in RECIPE["experiments"]:
        name = e["name"]
        # every rank holds the same model, bit for bit
        r0 = torch.load(tmp_path / f"two/states/{name}.rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"two/states/{name}.rank1.pt", weights_only=True)
        _close(r0, r1, 0.0, f"{name}: rank 0 vs rank 1")
        # the learned / tracked quantities before conversion (the fine-tuning checkpoint), 2 vs 1 process
        c1 = torch.load(tmp_path / f"one/experiments/{name}/ckpt/{name}/last.pt", weights_only=False)["model"]
        c2 = torch.load(tmp_path / f"two/experiments/{name}/ckpt/{name}/last.pt", weights_only=False)["model"]
        learned = [k for k in c1 if k.endswith(LEARNED)]
        assert learned, name
        _close(c1, c2, 1e-3, f"{name}: fine-tuned state, 2 vs 1 process")
        # the deployed (converted) model: scales, zero points, quantized weights
        _close(torch.load(tmp_path / f"one/states/{name}.rank0.pt", weights_only=True), r0, 1e-3,
               f"{name}: converted model, 2 vs 1 process")
    acc1 = {r["name"]: r["accuracy"] for r in rep1["experiments"]}
    acc2 = {r["name"]: r["accuracy"] for r in rep2["experiments"]}
    assert acc1 == acc2
    alpha1, alpha2 = (next(r for r in rep["experiments"] if r["name"] == "pact")["pact_alpha"] for rep in (rep1, rep2))
    assert alpha1 == alpha2 and len(alpha1) >= 5

"""A 2-process DDP run (torchrun, gloo on CPU) reaches the weights of a 1-process run of the same global
batches. The training set (1,347 = 21 x 64 + 3 examples) does not divide into batches: the last partial
batch is split unevenly over the ranks and must still count as in one process."""
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]  # the processes import this checkout's effdnn, not an installed one

RECIPE = {
    "name": "ddp",
    "seed": 0,
    "data": {"name": "synthetic", "batch_size": 64, "kwargs": {"n_train": 1347, "n_test": 300}},
    "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "baseline": {"epochs": 2, "optimizer": "sgd", "lr": 0.1, "schedule": "none"},
}


def _run(cmd, cwd, env):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _one_and_two_processes(tmp_path, recipe):
    """Run ``recipe`` into tmp_path/one (1 process) and tmp_path/two (torchrun, 2 processes, gloo)."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EFFDNN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    _run([sys.executable, "-m", "effdnn.cli", "run", "r.yaml", "--out", "one"], tmp_path, env)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "effdnn.cli", "run", "r.yaml", "--out", "two"], tmp_path, env)


FINETUNE = {"epochs": 2, "optimizer": "sgd", "lr": 0.05, "schedule": "none"}
EXPERIMENTS = [
    {"name": "prune-agp", "prune": {"method": "magnitude", "sparsity": 0.7, "schedule": "agp", "end": 0.75},
     "finetune": FINETUNE},
    {"name": "lsq", "quantize": {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4}}, "finetune": FINETUNE},
]


@pytest.mark.slow
@pytest.mark.parametrize("swa", [None, {"epochs": 1, "lr": 0.05, "every": 2}], ids=["plain", "swa"])
def test_two_process_ddp_equals_one_process(tmp_path, swa):
    recipe = {**RECIPE, "baseline": {**RECIPE["baseline"], **({"swa": swa} if swa else {})}}
    if swa is None:
        recipe["experiments"] = EXPERIMENTS
    _one_and_two_processes(tmp_path, recipe)
    one = torch.load(tmp_path / "one/baseline/model.pt", weights_only=True)
    two = torch.load(tmp_path / "two/baseline/model.pt", weights_only=True)
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=0, atol=1e-6), k
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    assert reports[0]["baseline"]["accuracy"] == reports[1]["baseline"]["accuracy"]
    if swa:  # the second epoch's 22 global steps, one weight set every 2
        for run in ("one", "two"):
            assert json.loads((tmp_path / run / "baseline/meta.json").read_text())["train"]["swa_models"] == 11
        return
    for exp in EXPERIMENTS:
        ckpt = f"experiments/{exp['name']}/ckpt/{exp['name']}/last.pt"
        a = torch.load(tmp_path / "one" / ckpt, weights_only=False)["model"]
        b = torch.load(tmp_path / "two" / ckpt, weights_only=False)["model"]
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-6, atol=1e-6), (exp["name"], k, (a[k] - b[k]).abs().max())
    for r1, r2 in zip(reports[0]["experiments"], reports[1]["experiments"]):
        assert r1["accuracy"] == r2["accuracy"], r1["name"]


@pytest.mark.slow
def test_two_process_rigl_moves_the_same_connections(tmp_path):
    """RigL sums the dense gradients over ranks before it chooses: both ranks, and a 1-process run of
    the same global batch, end with the same masks and weights."""
    recipe = {**RECIPE, "baseline": {**RECIPE["baseline"], "epochs": 1}, "experiments": [{
        "name": "rigl",
        "prune": {"method": "magnitude", "sparsity": 0.5, "scope": "global", "schedule": "rigl", "regrow": 0.5,
                  "end": 0.75, "steps": 4},
        "finetune": {"epochs": 2, "optimizer": "sgd", "lr": 0.1, "schedule": "none"}}]}
    _one_and_two_processes(tmp_path, recipe)
    ckpt = "experiments/rigl/ckpt/rigl/last.pt"
    one = torch.load(tmp_path / "one" / ckpt, weights_only=False)["model"]
    two = torch.load(tmp_path / "two" / ckpt, weights_only=False)["model"]
    masks = [k for k in one if k.endswith("weight_mask")]
    assert masks
    for k in one:
        if k in masks:
            assert torch.equal(one[k], two[k]), k
        else:
            assert torch.allclose(one[k], two[k], atol=1e-5), k
    rows = [json.loads((tmp_path / run / "report.json").read_text())["experiments"][0] for run in ("one", "two")]
    assert rows[0]["rigl"]["grown"] == rows[1]["rigl"]["grown"] > 0

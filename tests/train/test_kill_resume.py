"""kill -9 in the middle of training, then ``--resume``: the run ends bit-identical to an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = {
    "name": "kill", "seed": 0,
    "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 4096, "n_test": 64}},
    "model": {"name": "mlp", "kwargs": {"hidden": [256, 256]}},
    "baseline": {"epochs": 6, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
    "experiments": [{"name": "agp", "prune": {"method": "magnitude", "sparsity": 0.8, "schedule": "agp", "end": 0.75},
                     "finetune": {"epochs": 2, "optimizer": "sgd", "lr": 0.01}}],
}


def _cmd(out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effdnn.cli", "run", "r.yaml", "--out", out, *extra]


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EFFDNN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(_cmd("whole"), cwd=tmp_path, env={**env, "EFFDNN_CACHE": str(tmp_path / "cache-whole")},
                   check=True, capture_output=True, timeout=600)
    p = subprocess.Popen(_cmd("cut"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "baseline" / "ckpt" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)  # after the first epoch's checkpoint, in the middle of the second epoch
    p.wait()
    assert not (tmp_path / "cut" / "report.json").exists()
    done = subprocess.run(_cmd("cut", "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed after epoch" in done.stderr
    for rel in ("baseline/model.pt", "experiments/agp/ckpt/agp/last.pt"):
        a = torch.load(tmp_path / "whole" / rel, weights_only=False)
        b = torch.load(tmp_path / "cut" / rel, weights_only=False)
        a, b = (x["model"] if "model" in x else x for x in (a, b))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (rel, k)

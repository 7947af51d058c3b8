import json

import pytest
import torch
import yaml

import effdnn
from effdnn.report import REQUIRED, load_report

USER_FILES = {
    "net.py": "import torch\n"
              "def tiny(in_channels, num_classes, input_size, hidden=16):\n"
              "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels*input_size[0]*input_size[1], hidden),\n"
              "                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n",
    "data.py": "import torch\nfrom torch.utils.data import TensorDataset\n"
               "def blobs(n=200):\n"
               "    g = torch.Generator().manual_seed(0)\n"
               "    y = torch.arange(n) % 3\n"
               "    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()\n"
               "    return TensorDataset(x[:150], y[:150]), TensorDataset(x[150:], y[150:])\n",
}


def _recipe(tmp_path, **over):
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    r = {"name": "user", "data": {"name": "data.py:blobs", "batch_size": 25}, "model": {"name": "net.py:tiny", "kwargs": {"hidden": 8}},
         "baseline": {"epochs": 15, "lr": 0.05}, "output": str(tmp_path / "out"), **over}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    return tmp_path / "r.yaml"


def test_user_model_and_data_files_end_to_end(tmp_path):
    report = effdnn.run(_recipe(tmp_path))
    out = tmp_path / "out"
    base = report["baseline"]
    for key in REQUIRED:
        assert key in base
    assert base["accuracy"] > 0.9 and base["params"] == 16 * 8 + 8 + 8 * 3 + 3
    assert base["macs"] == 16 * 8 + 8 * 3 and base["compression_ratio"] == 1.0
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["threads"] >= 1
    on_disk = load_report(out)
    assert on_disk["baseline"]["accuracy"] == base["accuracy"]
    for f in ("report.md", "accuracy_vs_size.png", "accuracy_vs_energy.png", "baseline/model.pt"):
        assert (out / f).is_file(), f
    assert "| baseline |" in (out / "report.md").read_text()


def test_rerun_reuses_the_baseline(tmp_path, capsys):
    path = _recipe(tmp_path)
    first = effdnn.run(path)
    second = effdnn.run(path)
    assert "baseline: reusing" in capsys.readouterr().err
    assert first["baseline"]["accuracy"] == second["baseline"]["accuracy"]


def test_report_json_is_valid_json_with_numbers(tmp_path):
    effdnn.run(_recipe(tmp_path))
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert isinstance(data["baseline"]["energy_pj"], float) and data["baseline"]["energy_pj"] > 0
    assert data["experiments"] == []


def test_resume_reuses_unchanged_experiments_and_restarts_changed_ones(tmp_path, capsys):
    """--resume: an unchanged experiment is reused; one whose definition changed starts over (its old
    checkpoints, made for other settings, are removed instead of stopping the run)."""
    exp = {"name": "ft", "quantize": {"method": "qat", "weight": {"bits": 8}, "act": None}, "finetune": {"epochs": 1, "lr": 0.01}}
    effdnn.run(_recipe(tmp_path, experiments=[exp, {**exp, "name": "same"}]))
    assert (tmp_path / "out/experiments/ft/ckpt").is_dir()
    capsys.readouterr()
    changed = {**exp, "finetune": {"epochs": 2, "lr": 0.01}}
    report = effdnn.run(_recipe(tmp_path, experiments=[changed, {**exp, "name": "same"}]), resume=True)
    err = capsys.readouterr().err
    assert "same: done in an earlier run" in err and "ft: its definition (or the baseline) changed" in err
    from effdnn.train import load_checkpoint

    assert load_checkpoint(tmp_path / "out/experiments/ft/ckpt/ft/last.pt")["epoch"] == 2  # the new definition's
    assert [r["name"] for r in report["experiments"]] == ["ft", "same"]


def test_finetune_distills_from_the_experiment_baseline(tmp_path):
    recipe = {"name": "kd", "seed": 0, "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 128}},
              "model": {"name": "mlp"}, "baseline": {"epochs": 3, "lr": 0.01}, "output": str(tmp_path / "out"),
              "experiments": [{"name": "pruned-kd", "prune": {"method": "magnitude", "sparsity": 0.5},
                               "finetune": {"epochs": 2, "lr": 0.01, "distill": {"alpha": 0.9, "temperature": 2.0}}}]}
    report = effdnn.run(recipe)
    row = report["experiments"][0]
    assert row["accuracy"] > 0.9 and row["weight_sparsity"] >= 0.45

import json
from pathlib import Path

import pytest

import effdnn


def test_recipe_prune_finetune_compress_reports_the_file_size(tmp_path):
    recipe = {
        "name": "t", "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 128, "size": 12}},
        "model": {"name": "lenet5"},
        "baseline": {"epochs": 2, "lr": 0.003},
        "experiments": [
            {"name": "agp", "prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global", "schedule": "agp"},
             "finetune": {"epochs": 2, "lr": 0.001}},
            {"name": "dc", "prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global"},
             "finetune": {"epochs": 1, "lr": 0.001},
             "compress": {"method": "deep-compression", "bits": 4, "index_bits": 4}},
            {"name": "act", "activation_sparsity": {"method": "fatrelu", "target": 0.8}},
        ],
    }
    report = effdnn.run(recipe, out=tmp_path / "out")
    agp, dc, act = report["experiments"]
    assert agp["pruned_layers_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert agp["prune_schedule"][-1]["sparsity"] == pytest.approx(0.8)
    f = Path(dc["container"]["path"])
    assert f.parent == tmp_path / "out" / "experiments" / "dc"
    assert dc["size_bytes"] == f.stat().st_size
    assert dc["compression_ratio"] == pytest.approx(report["baseline"]["size_bytes"] / f.stat().st_size)
    assert dc["compression_ratio"] > 10
    assert set(act["activation_sparsity_per_layer"]) == set(act["fatrelu_thresholds"])
    assert act["activation_sparsity"] > report["baseline"]["activation_sparsity"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["experiments"][1]["size_bytes"] == dc["size_bytes"]

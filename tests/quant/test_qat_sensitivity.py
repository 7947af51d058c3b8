"""Sensitivity sweep rows, the greedy width choice under a budget, and the ``effdnn sensitivity`` command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import effdnn
from effdnn.models import build_model

from effdnn.errors import EffdnnError
from effdnn.sensitivity import as_overrides, pick_widths, sweep


def test_pick_widths_narrows_the_cheapest_layer_first_and_fits_the_budget():
    rows = [{"layer": "a", "bits": b, "params": 100, "loss_pts": {8: 0, 4: 0.1, 2: 5}[b]} for b in (8, 4, 2)]
    rows += [{"layer": "b", "bits": b, "params": 100, "loss_pts": {8: 0, 4: 2.0, 2: 9}[b]} for b in (8, 4, 2)]
    assert pick_widths(rows, 1600) == {"a": 8, "b": 8}
    assert pick_widths(rows, 1200) == {"a": 4, "b": 8}
    assert pick_widths(rows, 800) == {"a": 4, "b": 4}
    with pytest.raises(EffdnnError):
        pick_widths(rows, 100)
    assert as_overrides({"a": 4})["a"]["weight"]["bits"] == 4


def test_sweep_reports_more_loss_at_fewer_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(256, 16)
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    rows = sweep(model, evaluate, [x[:64]], widths=(8, 2))
    assert {r["layer"] for r in rows} == {"0", "2"} and len(rows) == 4
    for layer in ("0", "2"):
        loss = {r["bits"]: r["loss_pts"] for r in rows if r["layer"] == layer}
        assert loss[8] < 3 and loss[2] > loss[8]


# -- the `effdnn sensitivity` command ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
RECIPE = {"name": "sens", "seed": 0, "data": {"name": "digits", "batch_size": 64}, "model": {"name": "lenet5"},
          "baseline": {"epochs": 4, "optimizer": "adam", "lr": 0.003}}


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "effdnn.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def digits_recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sens")
    (folder / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "output": str(folder / "run")}))
    return folder


def test_sensitivity_command_prints_the_table_and_a_ready_to_paste_overrides_block(digits_recipe):
    p = _cli("sensitivity", "r.yaml", "--bits", "8,4,2", "--budget-kib", "10", "--out", "rows.json", cwd=digits_recipe)
    assert p.returncode == 0, p.stderr[-3000:]
    for col in ("W8A8", "W4A4", "W2A2", "features.0", "classifier.5"):
        assert col in p.stdout
    saved = json.loads((digits_recipe / "rows.json").read_text())
    layers = ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"]
    assert [(r["layer"], r["bits"]) for r in saved["rows"]] == [(n, b) for n in layers for b in (8, 4, 2)]
    loss = {(r["layer"], r["bits"]): r["loss_pts"] for r in saved["rows"]}
    assert all(loss[n, 2] > loss[n, 8] for n in layers)  # 2 bits costs every layer more than 8 bits
    acc = saved["baseline_accuracy"]
    assert all(abs(r["loss_pts"] - (acc - r["accuracy"]) * 100) < 1e-9 for r in saved["rows"])
    # the printed block parses as a quantize block and quantizes each layer at the picked width, in budget
    block = yaml.safe_load(p.stdout[p.stdout.index("overrides:"):p.stdout.index("rows:")])
    widths = {n: ov["weight"]["bits"] for n, ov in block["overrides"].items()}
    assert widths == saved["widths"] and set(widths) == set(layers)
    params = {r["layer"]: r["params"] for r in saved["rows"]}
    assert sum(params[n] * b for n, b in widths.items()) <= 10 * 8192 < sum(params.values()) * 8
    model = build_model("lenet5", 1, 10, (8, 8))
    q = effdnn.quantize(model, {"method": "lsq", "weight": {"bits": 8}, "act": {"bits": 8}, **block},
                        calib_data=[torch.randn(8, 1, 8, 8)])
    assert {n: q.get_submodule(n).weight_quant.fmt.bits for n in layers} == widths
    # a second sweep reuses the trained baseline
    p = _cli("sensitivity", "r.yaml", "--bits", "8", "--weights-only", cwd=digits_recipe)
    assert p.returncode == 0 and "baseline: reusing" in p.stderr and "W8 " in p.stdout


@pytest.mark.parametrize("args, needle", [
    (["r.yaml", "--bits", "8,1"], "--bits '8,1'"),
    (["r.yaml", "--bits", "four"], "bit-widths in 2..16"),
    (["r.yaml", "--bits", "4,2", "--budget-kib", "1"], "below the narrowest configuration"),
    (["nothere.yaml"], "nothere.yaml: file not found"),
])
def test_sensitivity_bad_input_is_one_line_and_exit_code_2(digits_recipe, args, needle):
    p = _cli("sensitivity", *args, cwd=digits_recipe)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and needle in p.stderr, p.stderr
    assert len([l for l in p.stderr.splitlines() if l.startswith("effdnn: error")]) == 1, p.stderr

"""Sensitivity sweep rows and the greedy width choice under a budget."""
import pytest
import torch
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.quant.sensitivity import as_overrides, pick_widths, sweep


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

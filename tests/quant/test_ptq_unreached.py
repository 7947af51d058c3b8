"""PTQ of a model with layers off its eval path (an auxiliary classifier run only in training, as in
GoogLeNet / Inception v3): those layers keep a float input, named on one warning line and in the report;
the rest is calibrated and exports as QDQ."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.aux = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor):
        h = self.body(x).relu().mean((2, 3))
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


def test_layers_off_the_eval_path_stay_float_with_one_line(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    q = effdnn.quantize(WithAux().eval(), {"method": "ptq", "act": {"calibrator": "max"}}, calib_data=calib)
    err = capsys.readouterr().err
    assert "calibration: aux never reached by the calibration data" in err and err.count("\n") == 1
    rows = {r["layer"]: r["act"] for r in q.effdnn_report["ptq_layers"]}
    assert rows["aux"] == "fp32 (never reached by the calibration data)" and rows["head"].startswith("uint8")
    assert q.aux.input_quant is None and q.head.input_quant.mode == "quantize"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(q(x), q.head(q.body(x).relu().mean((2, 3))))
    pytest.importorskip("onnxruntime")
    effdnn.export_onnx(q, x, tmp_path / "q.onnx")


def test_a_model_no_layer_of_which_runs_is_still_an_error() -> None:
    class Never(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(EffdnnError, match="never reached by the calibration data"):
        effdnn.quantize(Never(), {"method": "ptq", "act": {"calibrator": "max"}}, calib_data=[torch.randn(2, 4)])

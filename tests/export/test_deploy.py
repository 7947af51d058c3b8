"""effdnn.deploy on LeNet-5: the candidates it builds, what it skips and why, accuracy / agreement beside
latency, the fallback when an engine is missing, and bad input in one line (no timing assertions)."""
from __future__ import annotations

import sys

import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from effdnn.export.deploy import _pick
from effdnn.models.lenet5 import LeNet5

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    m = LeNet5().eval()
    data = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))) for _ in range(2)]
    return m, data


def test_float_model_runs_on_a_measured_engine_and_says_why(lenet, tmp_path) -> None:
    m, data = lenet
    x = data[0][0]
    d = effdnn.deploy(m, x, data=data, threads=1, rounds=1, workdir=tmp_path)
    assert set(d.latency_ms) == {"torch", "torch-inference", "onnxruntime"}
    assert d.engine == min(d.latency_ms, key=d.latency_ms.get)
    assert d.skipped["int8"].startswith("the model has no quantized layers")
    assert d.agreement["onnxruntime"] == 1.0 and set(d.accuracy) == set(d.latency_ms)
    torch.testing.assert_close(d(x), m(x).detach(), atol=1e-4, rtol=1e-4)
    assert "fastest measured" in d.reason and "(picked)" in str(d) and d.onnx_path == tmp_path / "model.onnx"


def test_quantized_model_gets_the_int8_engines(lenet, tmp_path) -> None:
    m, data = lenet
    q = effdnn.quantize(m, {"method": "ptq", "weight": {"granularity": "per_channel"},
                            "act": {"symmetric": False, "signed": False}}, [b[0] for b in data])
    d = effdnn.deploy(q, data[0][0], data=data, threads=1, rounds=1, workdir=tmp_path, min_agreement=0.9)
    assert {"int8", "onnxruntime", "torch"} <= set(d.latency_ms)
    assert d.agreement["int8"] >= 0.9 and "QDQ int8 graph" in str(d)
    named = effdnn.deploy(q, data[0][0], engine="int8", threads=1, rounds=1, workdir=tmp_path)
    assert named.engine == "int8" and set(named.latency_ms) == {"int8"} and "named by the caller" in named.reason
    agree = (named(data[1][0]).argmax(-1) == q(data[1][0]).argmax(-1)).float().mean()
    assert agree >= 0.9


def test_a_missing_engine_is_one_line_and_auto_falls_back(lenet, tmp_path, monkeypatch) -> None:
    m, data = lenet
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    d = effdnn.deploy(m, data[0][0], threads=1, rounds=1, workdir=tmp_path)
    assert d.skipped["onnxruntime"].startswith("not installed") and d.engine in ("torch", "torch-inference")
    assert "skipped: onnxruntime, int8" in d.reason
    with pytest.raises(EffdnnError, match="deploy: engine onnxruntime: not installed"):
        effdnn.deploy(m, data[0][0], engine="onnxruntime")


def test_an_engine_below_min_agreement_is_passed_over() -> None:
    skipped: dict[str, str] = {}
    best, reason = _pick({"onnxruntime": 1.0, "torch": 2.0}, {"onnxruntime": 0.9, "torch": 1.0}, 0.99, skipped)
    assert best == "torch" and "90.00%" in skipped["onnxruntime"] and "onnxruntime" not in reason


@pytest.mark.parametrize("kwargs, match", [
    ({"engine": "tensorrt"}, "unknown engine 'tensorrt'"),
    ({"engine": "int8"}, "engine int8: the model has no quantized layers"),
    ({"min_agreement": 2.0}, "min_agreement must be in"),
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"threads": 0}, "threads must be an integer >= 1"),
])
def test_bad_input_is_one_line(lenet, kwargs, match) -> None:
    m, data = lenet
    with pytest.raises(EffdnnError, match=match):
        effdnn.deploy(m, data[0][0], **kwargs)


def test_wrong_example_and_unconverted_qat_are_refused(lenet) -> None:
    m, data = lenet
    with pytest.raises(EffdnnError, match="forward fails on example"):
        effdnn.deploy(m, torch.randn(2, 3))
    qat = effdnn.quantize(m, {"method": "qat"}, [b[0] for b in data])
    with pytest.raises(EffdnnError, match="convert_qat"):
        effdnn.deploy(qat, data[0][0])
    with pytest.raises(EffdnnError, match="must be a torch.nn.Module"):
        effdnn.deploy("model.onnx", data[0][0])  # type: ignore[arg-type]

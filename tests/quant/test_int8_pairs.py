"""The int8 engine on CPUs whose u8 x s8 kernels add product pairs in saturating int16 (x86 without VNNI):
a model built so that 8-bit pairs overflow is computed exactly once its range is reduced."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant import deploy_int8
from effdnn.quant.deploy_int8 import int8_plan, to_int8
from effdnn.quant.int8_pairs import saturating_layers, weight_code_absmax
from effdnn.utils import cpu

SPEC = {"method": "ptq", "weight": {"format": "int", "bits": 8, "granularity": "per_channel"},
        "act": {"format": "int", "bits": 8, "calibrator": "max", "symmetric": False, "signed": False}}


def _inputs(n: int, seed: int) -> torch.Tensor:
    """Values near the top of the calibrated range: uint8 input codes ~200-255."""
    return 0.8 + 0.2 * torch.rand(n, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saturating_mlp() -> nn.Module:
    """Positive weights (codes up to 127 in every pair) x large uint8 codes: 2 * 255 * 127 > 32767."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    with torch.no_grad():
        for lin in (m[0], m[2]):
            lin.weight.uniform_(0.2, 1.0)
            lin.bias.zero_()
    return effdnn.quantize(m, SPEC, [_inputs(64, 1), torch.ones(1, 64)])


def _error_in_codes(engine: nn.Module, x: torch.Tensor) -> float:
    """max |engine - the fake-quantized model it claims to compute| (float logits), in units of the most
    one code of every input of the last layer can move an output."""
    last = int8_plan(engine).reference[2]
    with torch.no_grad():
        one_code = float(last.input_quant.scale * last.weight_quant(last.weight).abs().sum(1).max())
        return float((engine(x) - int8_plan(engine).reference(x)).abs().max()) / one_code


def test_detection_reads_cpu_flags(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    for flags, vnni in (({"avx2", "fma"}, False), ({"avx512f", "avx512_vnni"}, True), ({"avx_vnni"}, True),
                        ({"amx_int8"}, True), (None, False)):
        monkeypatch.setattr(cpu, "cpu_flags", lambda f=flags: f)
        assert cpu.has_vnni() is vnni and cpu.int8_pairs_saturate() is (not vnni)
    monkeypatch.setattr(cpu, "is_x86", lambda: False)  # ARM int8 kernels widen to int32
    assert not cpu.int8_pairs_saturate()
    assert cpu.pair_sum_fits(127, 128) and cpu.pair_sum_fits(255, 64) and not cpu.pair_sum_fits(255, 127)


def test_the_model_saturates_at_eight_bits(saturating_mlp) -> None:
    assert saturating_layers(saturating_mlp) == ["0", "2"]
    assert weight_code_absmax(saturating_mlp[0]) == 127


@pytest.mark.parametrize("how", ["weight", "act"])
def test_reduced_range_is_exact_where_eight_bits_were_not(saturating_mlp, how) -> None:
    x = _inputs(256, 2)
    engine = to_int8(saturating_mlp, reduce_range=how)
    plan = int8_plan(engine)
    assert plan.reduced == ["0", "2"] and plan.reference is not saturating_mlp
    assert saturating_layers(plan.reference) == []
    assert _error_in_codes(engine, x) < 0.05  # the same codes: float rounding of the float-out classifier only
    assert "7-bit" in plan.summary()
    if cpu.int8_pairs_saturate():  # this CPU's kernels overflow at 8 bits: far off before
        full = to_int8(saturating_mlp, reduce_range="none")
        assert int8_plan(full).saturating == ["0", "2"]
        assert _error_in_codes(full, x) > 10


def test_auto_follows_the_cpu(saturating_mlp, monkeypatch) -> None:
    monkeypatch.setattr(deploy_int8, "int8_pairs_saturate", lambda: True)
    assert int8_plan(to_int8(saturating_mlp)).reduce_range == "weight"
    monkeypatch.setattr(deploy_int8, "int8_pairs_saturate", lambda: False)
    plan = int8_plan(to_int8(saturating_mlp))
    assert plan.reduce_range == "none" and plan.reduced == [] and plan.reference is saturating_mlp
    with pytest.raises(EffdnnError, match="reduce_range must be one of"):
        to_int8(saturating_mlp, reduce_range="8bit")  # type: ignore[arg-type]


def test_deploy_states_what_the_int8_engine_computes(saturating_mlp, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(deploy_int8, "int8_pairs_saturate", lambda: True)  # a CPU without VNNI
    x = _inputs(64, 3)
    y = saturating_mlp(x).argmax(1)  # labels: the given model's own predictions
    run = effdnn.deploy(saturating_mlp, x, engine="int8", data=[(x, y)], threads=1, rounds=1, workdir=tmp_path)
    assert "7-bit weights in 2 layers" in run.description
    acc, exact = run.computed["int8"]
    assert exact == 1.0 and 0 <= acc <= 1 and "its accuracy" in str(run)


def test_deploy_exports_seven_bit_weights_for_onnxruntime_without_vnni(saturating_mlp, monkeypatch, tmp_path) -> None:
    import importlib

    deploy_mod = importlib.import_module("effdnn.export.deploy")  # the module (the package exports the function)
    monkeypatch.setattr(deploy_mod, "int8_fusion_saturates", lambda: True)
    x = _inputs(64, 4)
    run = effdnn.deploy(saturating_mlp, x, engine="onnxruntime", data=[x], threads=1, rounds=1, workdir=tmp_path)
    assert "7-bit weights in 2 layers" in run.description
    assert run.computed["onnxruntime"][1] == 1.0  # QLinear / QGemm compute the reduced model exactly

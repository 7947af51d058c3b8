"""SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^a / max|W_j|^(1-a), folded into the producer when
exact (checked), else an explicit scale; the float model's function is unchanged; outliers shrink."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.smoothquant import smooth_model, smoothing_factors
from effdnn.quant.stats import collect_input_stats
from tests.quant.tiny_bert import batches, tiny_bert


class PreLN(nn.Module):
    """LayerNorm read only by two Linears (foldable), then a Linear after a GELU (explicit scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.a, self.b, self.c = nn.LayerNorm(16), nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return self.c(torch.nn.functional.gelu(self.a(h) + self.b(h)))


def _data(outlier: float = 30.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 16, generator=g) for _ in range(4)]
    return xs


def _model(outlier: float = 30.0) -> PreLN:
    torch.manual_seed(0)
    m = PreLN().eval()
    with torch.no_grad():
        m.ln.weight[3] = outlier  # one outlier channel, as in the paper's Fig. 4
    return m


def test_factors_formula() -> None:
    absx, w = torch.tensor([4.0, 1.0, 9.0]), torch.tensor([[1.0, -4.0, 1.0], [0.5, 2.0, -0.25]])
    s = smoothing_factors(absx, [w], 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5, 3.0]))
    assert torch.allclose(smoothing_factors(absx, [w], 1.0), absx)


def test_fold_into_layernorm_balances_ranges() -> None:
    m, data = _model(), _data()
    ref = m(data[0])
    rows = smooth_model(m, 0.5, data, None)
    by = {tuple(r["layers"]): r["folded_into"] for r in rows}
    assert by[("a", "b")] == "ln" and by[("c",)] == "explicit scale"
    assert torch.allclose(m(data[0]), ref, atol=1e-5)  # an exact transformation of the float model
    st = collect_input_stats(m, {"a": m.a}, data, None, "t", hessian=False)["a"]
    absw = torch.maximum(m.a.weight.abs().amax(0), m.b.weight.abs().amax(0))
    assert torch.allclose(st.absmax, absw, rtol=1e-4)  # alpha 0.5: max|X_j / s_j| = max|W_j s_j|


def test_post_ln_bert_keeps_its_function() -> None:
    m, data = tiny_bert(), batches()
    with torch.no_grad():
        ref = m(**data[0]).last_hidden_state
        rows = smooth_model(m, 0.5, data, None)
        got = m(**data[0]).last_hidden_state
    assert torch.allclose(got, ref, atol=1e-4)
    # post-LN: each LayerNorm output is also the residual stream, so no fold is exact there; the attention
    # output projection's s folds into the value projection's rows (probabilities @ V keeps V's channels)
    assert sum(len(r["layers"]) for r in rows) == 13
    folded = {r["layers"][0]: r["folded_into"] for r in rows if r["folded_into"] != "explicit scale"}
    assert folded == {f"encoder.layer.{i}.attention.output.dense": f"encoder.layer.{i}.attention.self.value"
                      for i in range(2)}


def test_folded_equals_unfolded_in_deployment_and_onnx(tmp_path) -> None:
    from effdnn.export.onnx import run_onnx
    from effdnn.quant.deploy_linear import deploy_linears

    spec = {"method": "smoothquant", "alpha": 0.5, "weight": {"bits": 7, "granularity": "per_channel"},
            "act": {"bits": 8, "dynamic": "per_token"}}
    q = {fold: effdnn.quantize(tiny_bert(), {**spec, "fold": fold}, batches(2)) for fold in (True, False)}
    assert sum(r["folded_into"] != "explicit scale" for r in q[True].effdnn_report["smoothquant"]) == 2
    assert sum(r["folded_into"] != "explicit scale" for r in q[False].effdnn_report["smoothquant"]) == 0
    x = batches(1, seed=5)[0]
    with torch.no_grad():
        ref = deploy_linears(q[False])(**x).last_hidden_state
        got = deploy_linears(q[True])(**x).last_hidden_state
    assert float((got - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    import onnx

    out, muls = {}, {}
    for fold, m in q.items():
        path = effdnn.export_onnx(m, x, tmp_path / f"f{fold}.onnx")
        out[fold] = run_onnx(path, x)
        muls[fold] = sum(n.op_type == "Mul" for n in onnx.load(str(path)).graph.node)
    assert muls[False] - muls[True] == 2  # one input Mul less per folded layer
    assert abs(out[True] - out[False]).max() < 1e-4 * abs(out[False]).max()


def test_smoothing_helps_per_tensor_int8_with_outlier_channel() -> None:
    data = _data()
    ref = _model()(data[0])
    err = {}
    for method in ("ptq", "smoothquant"):
        extra = {"alpha": 0.5} if method == "smoothquant" else {}
        q = effdnn.quantize(_model(), {"method": method, "act": {"bits": 8, "dynamic": "per_tensor"},
                                       "weight": {"bits": 8, "granularity": "per_channel"}, **extra}, data)
        with torch.no_grad():
            err[method] = float((q(data[0]) - ref).pow(2).mean())
    assert err["smoothquant"] < 0.5 * err["ptq"], err


def test_smoothquant_method_report_and_errors() -> None:
    q = effdnn.quantize(tiny_bert(), {"method": "smoothquant", "alpha": 0.6, "act": {"dynamic": "per_token"}}, batches(2))
    assert len(q.effdnn_report["smoothquant"]) >= 1 and q.effdnn_report["ptq_act"] == "int8 dynamic per_token"
    with pytest.raises(EffdnnError, match="alpha"):
        effdnn.quantize(tiny_bert(), {"method": "smoothquant", "alpha": 1.5}, batches(1))
    with pytest.raises(EffdnnError, match="smoothquant: the model has no Linear layer"):
        effdnn.quantize(nn.Sequential(nn.ReLU()), {"method": "smoothquant"}, [torch.randn(2, 3)])
    with pytest.raises(EffdnnError, match="not arguments of"):
        effdnn.quantize(tiny_bert(), {"method": "smoothquant"}, [{"ids": torch.zeros(2, 4, dtype=torch.long)}])


@pytest.mark.parametrize("act, folds", [(nn.ReLU(), True), (nn.GELU(), False)])
def test_fold_through_positively_homogeneous_activation(act: nn.Module, folds: bool) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), act, nn.Linear(32, 8)).eval()
    data = _data()
    ref = m(data[0])
    rows = {r["layers"][0]: r["folded_into"] for r in smooth_model(m, 0.5, data, None)}
    assert rows["2"] == ("0" if folds else "explicit scale")  # relu(x / s) = relu(x) / s for s > 0; gelu: not
    assert torch.allclose(m(data[0]), ref, atol=1e-5)

"""PTQ end to end: BN folding, layer coverage (Conv1d, depthwise, Linear, Add, Hugging Face),
overrides, the digits accuracy floor, cost-model precision, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.models import build_model
from effdnn.quant import QuantAdd, QuantConv1d, QuantConv2d, QuantLinear, fold_batchnorm
from effdnn.train import evaluate
from tests.quant.digits_model import trained_digits_lenet


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach(), out.detach()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-20)))


def _trained_bn_resnet() -> nn.Module:
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8)
    m.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(5):
            m(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_fold_batchnorm_is_exact() -> None:
    m = _trained_bn_resnet()
    x = torch.randn(4, 1, 8, 8)
    ref = m(x)
    pairs = fold_batchnorm(m)
    assert len(pairs) == sum(isinstance(mod, nn.Conv2d) for mod in m.modules())
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_resnet_ptq_quantizes_convs_and_residual_adds() -> None:
    m = _trained_bn_resnet()
    calib = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    q = effdnn.quantize(m, {"method": "ptq", "act": {"calibrator": "kl"}}, calib)
    kinds = [type(mod) for mod in q.modules()]
    assert kinds.count(QuantConv2d) == sum(isinstance(mod, nn.Conv2d) for mod in m.modules())
    assert kinds.count(QuantAdd) == 3 and kinds.count(QuantLinear) == 1
    assert type(m.stem[0]) is nn.Conv2d  # the input model is left untouched
    x = torch.randn(32, 1, 8, 8)
    assert sqnr_db(m(x), q(x)) > 20
    c, c0 = effdnn.cost(q, x, skip_zeros=False), effdnn.cost(m, x, skip_zeros=False)
    assert c.bitops == pytest.approx(c0.bitops * 64 / 1024, rel=1e-6)  # int8 x int8 vs fp32 x fp32
    assert 3.4 < c0.size_bytes / c.size_bytes < 4.0  # 8-bit weights + scales + fp32 biases


class Conv1dDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 5, padding=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 16)
        h = torch.relu(self.c1(x)).reshape(x.shape[0], 8, 4, 4)
        return self.fc(torch.relu(self.dw(h)).flatten(1))


def test_conv1d_and_depthwise() -> None:
    torch.manual_seed(0)
    m = Conv1dDepthwise().eval()
    calib = [torch.randn(32, 3, 16) for _ in range(2)]
    q = effdnn.quantize(m, {"method": "ptq", "weight": {"granularity": "per_channel"}, "act": {"calibrator": "mse"}}, calib)
    assert isinstance(q.c1, QuantConv1d) and isinstance(q.dw, QuantConv2d) and q.dw.groups == 8
    assert q.dw.weight_quant.params.scale.shape == (8,)
    assert q.c1.input_quant.fmt.signed and not q.dw.input_quant.fmt.signed  # post-ReLU input: unsigned
    x = torch.randn(64, 3, 16)
    assert sqnr_db(m(x), q(x)) > 25


def test_overrides_keep_fp_and_8bit() -> None:
    m = build_model("lenet5", 1, 10, (8, 8)).eval()
    calib = [torch.randn(8, 1, 8, 8)]
    spec = {"method": "ptq", "weight": {"bits": 4, "granularity": "per_channel"}, "keep_fp": ["last"],
            "keep_8bit": ["first"], "overrides": {"classifier.3": {"weight": {"bits": 6}, "act": {"bits": 6}}}}
    q = effdnn.quantize(m, spec, calib)
    assert type(q.classifier[5]) is nn.Linear  # last layer left float
    assert q.features[0].weight_quant.fmt.bits == 8 and q.features[0].input_quant.fmt.bits == 8
    assert q.features[3].weight_quant.fmt.bits == 4
    assert q.classifier[3].weight_quant.fmt.bits == 6 and q.classifier[3].input_quant.fmt.bits == 6
    p = q.features[3].effdnn_precision()
    assert (p.weight_bits, p.act_bits) == (4, 8)
    w = q.features[3].weight
    assert p.storage_bits == w.numel() * 4 + w.shape[0] * 32 + q.features[3].bias.numel() * 32 + 2 * 32
    q2 = effdnn.quantize(m, {"method": "ptq", "keep_fp": ["classifier.*"]}, calib)
    assert all(type(l) is nn.Linear for l in q2.classifier if isinstance(l, nn.Linear))


def test_weight_formats_log_kmeans_fixed() -> None:
    torch.manual_seed(0)
    m = build_model("lenet5", 1, 10, (8, 8)).eval()
    calib = [torch.randn(8, 1, 8, 8)]
    x = torch.randn(16, 1, 8, 8)
    for wspec, floor in [({"format": "kmeans", "bits": 4}, 20), ({"format": "log", "bits": 5, "granularity": "per_channel"}, 12),
                         ({"format": "fixed", "bits": 8, "int_bits": 0}, 15)]:
        q = effdnn.quantize(m, {"method": "ptq", "weight": wspec, "act": None}, calib)
        assert sqnr_db(m(x), q(x)) > floor, wspec
    qk = effdnn.quantize(m, {"method": "ptq", "weight": {"format": "kmeans", "bits": 3}, "act": None}, calib)
    assert qk.classifier[1].weight_quant(qk.classifier[1].weight).unique().numel() <= 8
    p = qk.classifier[1].effdnn_precision()
    w = qk.classifier[1].weight
    assert p.weight_kind == "float" and p.storage_bits == w.numel() * 3 + 8 * 32 + w.shape[0] * 32


def test_hugging_face_bert_linears() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(cfg).eval()
    batches = [{"input_ids": torch.randint(0, 50, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
               for _ in range(3)]
    q = effdnn.quantize(m, {"method": "ptq", "act": {"calibrator": "percentile"}}, batches)
    n_lin = sum(type(mod) is nn.Linear for mod in m.modules())
    assert sum(isinstance(mod, QuantLinear) for mod in q.modules()) == n_lin == 2 * 6 + 2
    ref, out = m(**batches[0]).logits, q(**batches[0]).logits
    assert sqnr_db(ref, out) > 15
    c = effdnn.cost(q, batches[0])
    assert any(l.precision.startswith("w int8") for l in c.layers)


@pytest.fixture(scope="module")
def digits_lenet():
    return trained_digits_lenet()


@pytest.mark.parametrize("spec, max_drop", [
    ({"act": {"calibrator": "kl"}}, 0.01), ({"act": {"calibrator": "mse"}}, 0.01),
    ({"act": {"calibrator": "percentile"}}, 0.01), ({"weight": {"bits": 4, "granularity": "per_channel"}}, 0.03),
    ({"weight": {"format": "kmeans", "bits": 4}, "act": None}, 0.02),
])
def test_ptq_accuracy_floor_on_digits(digits_lenet, spec, max_drop) -> None:
    m, data = digits_lenet
    fp32 = evaluate(m, data.test)
    assert fp32 > 0.9
    calib = torch.utils.data.DataLoader(data.train, batch_size=64)
    q = effdnn.quantize(m, {"method": "ptq", **spec}, calib)
    assert evaluate(q, data.test) >= fp32 - max_drop


@pytest.mark.parametrize("spec, needle", [
    ({"method": "ptq", "weight": {"bits": 1}}, "quantize.weight: int format: bits must be an integer in 2..16"),
    ({"method": "ptq", "act": {"bits": 17}}, "bits must be an integer in 2..16"),
    ({"method": "ptq", "weight": {"format": "posit"}}, "unknown format 'posit'"),
    ({"method": "ptq", "act": {"calibrator": "entropy"}}, "unknown calibrator 'entropy'"),
    ({"method": "ptq", "act": {"format": "kmeans"}}, "for weights only"),
    ({"method": "ptq", "weight": {"format": "int", "preset": "fp16"}},
     "quantize.weight: preset: not an option of format 'int' (its options: symmetric, narrow_range)"),
    ({"method": "ptq", "weight": {"format": "float", "exp_bits": 4}}, "give exp_bits and man_bits together"),
    ({"method": "ptq", "keep_fp": ["lyr.*"]}, "ptq.keep_fp: pattern 'lyr.*' matches no layer"),
    ({"method": "ptq", "overrides": {"conv9": {"fp": True}}}, "ptq.overrides: pattern 'conv9' matches no layer"),
])
def test_bad_specs_are_one_line_errors(spec, needle) -> None:
    m = build_model("lenet5", 1, 10, (8, 8))
    with pytest.raises(EffdnnError) as e:
        effdnn.quantize(m, spec, [torch.randn(2, 1, 8, 8)])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_empty_calibration_and_nan_are_errors() -> None:
    m = build_model("lenet5", 1, 10, (8, 8))
    with pytest.raises(EffdnnError, match="calibration set is empty"):
        effdnn.quantize(m, {"method": "ptq"}, [])
    with pytest.raises(EffdnnError, match="NaN or Inf"):
        effdnn.quantize(m, {"method": "ptq"}, [torch.full((2, 1, 8, 8), float("nan"))])
    bad = build_model("lenet5", 1, 10, (8, 8))
    with torch.no_grad():
        bad.features[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(EffdnnError, match="NaN or Inf"):
        effdnn.quantize(bad, {"method": "ptq", "fold_bn": False}, [torch.randn(2, 1, 8, 8)])


def test_float_formats_in_ptq_and_cli_formats() -> None:
    m = build_model("lenet5", 1, 10, (8, 8)).eval()
    q = effdnn.quantize(m, {"method": "ptq", "weight": {"format": "float", "preset": "fp8_e4m3"},
                            "act": {"format": "float", "exp_bits": 5, "man_bits": 2}}, [torch.randn(4, 1, 8, 8)])
    w = q.features[0].weight
    assert torch.equal(q.features[0].weight_quant(w), w.to(torch.float8_e4m3fn).float())
    p = q.features[0].effdnn_precision()
    assert (p.weight_bits, p.act_bits, p.weight_kind) == (8, 8, "float")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "effdnn.cli", "formats"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(f in out.stdout for f in ("int", "fixed", "float", "log", "kmeans"))


def test_cli_bad_quantize_block_exit_code_2(tmp_path) -> None:
    import subprocess
    import sys
    (tmp_path / "r.yaml").write_text("baseline: {epochs: 1}\nexperiments: [{name: a, quantize: {method: ptq, weight: {bits: 20}}}]\n")
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(effdnn.__file__).parents[1])}  # this checkout's effdnn
    p = subprocess.run([sys.executable, "-m", "effdnn.cli", "run", "r.yaml", "--out", "o"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "experiments[0].quantize.weight" in p.stderr and "2..16" in p.stderr
    assert len([l for l in p.stderr.splitlines() if l.strip()]) == 1

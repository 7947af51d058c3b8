"""The QAT flow: prepare -> train (loss goes down) -> convert to static quantizers with the same outputs."""
import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.models.resnet import ResNetCifar
from effdnn.quant import Quantizer
from effdnn.quant.bn_fold_qat import FoldedBNWeight
from effdnn.quant.qat import FreezeBN, convert_qat
from effdnn.quant.qat_quantizers import QATQuantizer

METHODS = [
    {"method": "qat", "weight": {"bits": 4, "granularity": "per_channel"}, "act": {"bits": 4}},
    {"method": "pact", "weight": {"bits": 3}, "act": {"bits": 3}},
    {"method": "pact", "weight": {"bits": 3}, "act": {"bits": 3}, "weight_quantizer": "uniform"},
    {"method": "lsq", "weight": {"bits": 3}, "act": {"bits": 3}},
    {"method": "dorefa", "weight": {"bits": 2}, "act": {"bits": 8}},
    {"method": "qat", "weight": {"format": "kmeans", "bits": 3}, "act": None},
    {"method": "qat", "weight": {"format": "log", "bits": 4}, "act": None},
]


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return x, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 4))


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _train(model, x, y, steps, lr=3e-3, exp=None):
    """A plain loop; with ``exp`` (an effdnn.Experiment on ``model``) it also runs the techniques' hooks."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    if exp is not None:
        exp.attach(opt)
        exp.epoch(0)
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model, x, y)
        (exp.loss(loss) if exp is not None else loss).backward()
        opt.step()
        if exp is not None:
            exp.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def pretrained():
    x, y = _data()
    return _train(_model(), x, y, 30)


@pytest.mark.parametrize("spec", METHODS, ids=lambda s: f"{s['method']}-{s['weight'].get('format', 'int')}{s['weight']['bits']}")
def test_short_qat_run_lowers_the_loss_and_converts_exactly(spec, pretrained):
    x, y = _data()
    exp = effdnn.Experiment(pretrained, {"quantize": spec, "finetune": {"epochs": 1}}, data=[x[:64]])  # pact: its L2 term
    model = exp.model
    assert any(isinstance(m, QATQuantizer) for m in model.modules())
    model.eval()
    with torch.no_grad():
        before = _loss(model, x, y).item()
    after = _loss(_train(model, x, y, 30, lr=1e-3, exp=exp), x, y).item()
    assert after < 0.8 * before
    with torch.no_grad():
        trained = model(x)
    convert_qat(model)
    assert not any(isinstance(m, QATQuantizer) for m in model.modules())
    assert any(isinstance(m, Quantizer) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), trained, atol=1e-5)
    report = effdnn.cost(model, x[:1])
    assert report.size_bytes < 0.5 * report.fp32_size_bytes


def test_first_and_last_layers_kept_at_8_bits_by_pact_and_lsq():
    x, _ = _data(64)
    for method in ("pact", "lsq"):
        m = effdnn.Experiment(_model(), {"quantize": {"method": method, "weight": {"bits": 2}, "act": {"bits": 2}}},
                              data=[x]).model
        assert m[0].weight_quant.fmt.bits == 8 and m[7].weight_quant.fmt.bits == 8
        assert m[2].weight_quant.fmt.bits == 2 and m[5].input_quant.fmt.bits == 2


def test_mixed_widths_from_patterns():
    x, _ = _data(64)
    spec = {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4}, "keep_8bit": [], "keep_fp": ["last"],
            "overrides": {"5": {"weight": {"bits": 2}}}}
    m = effdnn.quantize(_model(), spec, calib_data=[x])
    assert [m[i].weight_quant.fmt.bits for i in (0, 2, 5)] == [4, 4, 2]
    assert getattr(m[7], "weight_quant", None) is None


def test_bn_folded_during_training_then_frozen():
    torch.manual_seed(0)
    model = ResNetCifar(depth=8, width=4, in_channels=1, num_classes=4)
    x, y = _data(64)
    q = effdnn.Experiment(model, {"quantize": {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4},
                                               "bn_freeze_epoch": 1}}, data=[x]).model
    folded = [m for m in q.modules() if isinstance(m, FoldedBNWeight)]
    assert folded and not any(isinstance(m, nn.BatchNorm2d) for m in q.modules() if not isinstance(m, FoldedBNWeight)
                              and m not in [f.bn for f in folded])
    bn = folded[0].bn
    before = bn.running_mean.clone()
    q.train()
    _loss(q, x, y).backward()
    assert not torch.equal(bn.running_mean, before)  # batch statistics still update
    FreezeBN(1).on_epoch_start(q, 1)
    frozen = bn.running_mean.clone()
    _loss(q, x, y).backward()
    assert torch.equal(bn.running_mean, frozen)
    q.eval()
    with torch.no_grad():
        ref = q(x)
    convert_qat(q)
    assert not any(isinstance(m, (FoldedBNWeight, nn.BatchNorm2d)) for m in q.modules())
    with torch.no_grad():
        assert torch.allclose(q(x), ref, atol=1e-4)


def test_bad_input_is_one_clear_error():
    x, _ = _data(16)
    with pytest.raises(EffdnnError, match="activations support format int"):
        effdnn.quantize(_model(), {"method": "lsq", "act": {"format": "log", "bits": 4}}, calib_data=[x])
    with pytest.raises(EffdnnError, match="unknown key"):
        effdnn.quantize(_model(), {"method": "pact", "alpha": 3}, calib_data=[x])
    with pytest.raises(EffdnnError, match="from_scratch"):
        effdnn.quantize(_model(), {"method": "qat", "from_scratch": True}, calib_data=[x])

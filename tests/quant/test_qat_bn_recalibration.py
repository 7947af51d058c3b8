"""``bn_recalibration``: BatchNorm statistics re-estimated with the weights quantized (fold_bn: false)."""
import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.methods.dorefa import dorefa_weight


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 4)).eval()


def test_statistics_are_those_of_the_quantized_weights():
    """Slow reference: the cumulative mean / variance over the batches of the first BN's input, computed
    by hand from the DoReFa-quantized first convolution (its input is the data, so no layer before it)."""
    torch.manual_seed(1)
    batches = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    model = _model()
    with torch.no_grad():  # stale statistics, far from what any weights give
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(100.0)
    spec = {"method": "dorefa", "weight": {"bits": 4}, "act": None, "fold_bn": False, "bn_recalibration": 3}
    q = effdnn.quantize(model, spec, batches)
    wq = dorefa_weight(model[0].weight.detach(), 4)
    outs = [nn.functional.conv2d(x, wq, padding=1) for x in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(q[1].running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q[1].running_var, var, rtol=1e-4, atol=1e-5)
    assert model[1].running_mean.eq(5.0).all()  # the input model is left as it was


def test_without_it_the_stored_statistics_stay():
    model = _model()
    q = effdnn.quantize(model, {"method": "dorefa", "weight": {"bits": 4}, "act": None, "fold_bn": False},
                        [torch.randn(8, 1, 8, 8)])
    torch.testing.assert_close(q[1].running_mean, model[1].running_mean)


def test_needs_unfolded_batchnorms():
    with pytest.raises(EffdnnError, match="bn_recalibration needs fold_bn: false"):
        effdnn.quantize(_model(), {"method": "dorefa", "weight": {"bits": 4}, "bn_recalibration": 2},
                        [torch.randn(8, 1, 8, 8)])

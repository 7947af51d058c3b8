import copy

import pytest
import torch
from torch import nn

import effdnn
from effdnn.context import ExperimentContext
from effdnn.errors import EffdnnError
from effdnn.prune.activation import FATReLU, ActivationHoyer, ActivationL1, activation_sparsity_per_layer, hoyer_density
from effdnn.registry import ACTIVATION_SPARSITY


def test_fatrelu_forward_and_gradient():
    f = FATReLU(0.5)
    x = torch.tensor([-1.0, 0.2, 0.5, 0.6, 2.0], requires_grad=True)
    y = f(x)
    assert y.tolist() == [0.0, 0.0, 0.0, pytest.approx(0.6), 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def _ctx(data):
    return ExperimentContext(data=None, device=torch.device("cpu"), calib_data=data)


def test_fatrelu_calibration_reaches_the_target(tiny, tiny_data):
    ctx = _ctx(tiny_data)
    plain = activation_sparsity_per_layer(tiny, tiny_data)
    m = ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 0.85}, ctx)
    assert isinstance(m.relu1, FATReLU) and isinstance(m.relu2, FATReLU)
    got = activation_sparsity_per_layer(m, tiny_data)
    for n in ("relu1", "relu2"):
        assert got[n] == pytest.approx(0.85, abs=0.01)
        assert got[n] > plain[n]
    assert ctx.extra["fatrelu_thresholds"]["relu1"] > 0


def test_cost_model_skips_macs_of_zero_activations(tiny, tiny_data):
    x = tiny_data[0][0]
    m = ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 0.9}, _ctx(tiny_data))
    c = effdnn.cost(m, x)
    conv2 = next(l for l in c.layers if l.name == "conv2")
    with torch.no_grad():
        a = m.relu1(m.bn1(m.conv1(x)))  # conv2's input
    zero = float((a == 0).float().mean())
    assert conv2.activation_sparsity == pytest.approx(zero)
    assert conv2.effective_macs == pytest.approx(conv2.macs * (1 - zero) * (1 - conv2.weight_sparsity))


def _l1(a):
    return a.abs().mean()


# (method, callback, the penalty of one layer's output, a lambda that sparsifies the tiny net in 15 epochs)
PENALTIES = [("l1", ActivationL1, _l1, 5.0), ("hoyer", ActivationHoyer, hoyer_density, 20.0)]


@pytest.mark.parametrize("method,callback,penalty,_", PENALTIES)
def test_activation_penalty_value(tiny, tiny_data, method, callback, penalty, _):
    cb = callback(["relu1", "relu2"], weight=0.1)
    cb.on_fit_start(tiny, None)
    tiny.train()
    x = tiny_data[0][0]
    with torch.no_grad():
        a1 = tiny.relu1(tiny.bn1(tiny.conv1(x)))
        a2 = tiny.relu2(tiny.bn2(tiny.conv2(a1)))
    cb.acts = []  # the reference pass above went through the hooks too
    tiny(x)
    torch.testing.assert_close(cb.extra_loss(tiny), 0.1 * (penalty(a1) + penalty(a2)))
    assert cb.extra_loss(tiny) is None  # consumed
    cb.on_fit_end(tiny)
    assert not tiny.relu1._forward_hooks


@pytest.mark.parametrize("method,_,__,weight", PENALTIES)
def test_activation_penalty_training_makes_activations_sparser(tiny, tiny_data, method, _, __, weight):
    from effdnn.train_spec import TrainSpec

    spec = TrainSpec(epochs=15, lr=0.03)
    plain = copy.deepcopy(tiny)
    _ctx(tiny_data).fit(plain, spec, desc="plain")
    ctx = _ctx(tiny_data)
    m = ACTIVATION_SPARSITY.apply(tiny, {"method": method, "weight": weight}, ctx)
    ctx.fit(m, spec, desc=method)
    a = activation_sparsity_per_layer(plain, tiny_data)
    b = activation_sparsity_per_layer(m, tiny_data)
    assert b["relu1"] + b["relu2"] > a["relu1"] + a["relu2"] + 0.2


def test_hoyer_density_on_hand_made_maps():
    # per sample (sum |a|)^2 / (n sum a^2): a constant map 1, one non-zero of n = 4 values 1/4
    a = torch.tensor([[[2.0, 2.0], [2.0, 2.0]], [[0.0, 3.0], [0.0, 0.0]]])
    torch.testing.assert_close(hoyer_density(a), torch.tensor((1.0 + 0.25) / 2))
    torch.testing.assert_close(hoyer_density(5 * a), hoyer_density(a))  # scale-invariant
    # the gradient pushes values below sum a^2 / sum |a| down and the larger ones up
    x = torch.tensor([[0.1, 0.2, 1.0, 3.0]], requires_grad=True)
    hoyer_density(x).backward()
    pivot = float((x.detach() ** 2).sum() / x.detach().sum())
    assert all((g > 0) == (v < pivot) for g, v in zip(x.grad[0].tolist(), x.detach()[0].tolist()))


def test_extra_zeros_thresholds_after_the_penalty(tiny, tiny_data):
    ctx = _ctx(tiny_data)
    before = activation_sparsity_per_layer(tiny, tiny_data)
    m = ACTIVATION_SPARSITY.apply(tiny, {"method": "hoyer", "weight": 1.0, "extra_zeros": 0.1, "batches": 4}, ctx)
    assert isinstance(m.relu1, nn.ReLU)  # thresholds come after fine-tuning, in a finalizer
    for fin in ctx.finalizers:
        m = fin(m)
    assert isinstance(m.relu1, FATReLU) and isinstance(m.relu2, FATReLU)
    assert set(ctx.extra["fatrelu_thresholds"]) == {"relu1", "relu2"}
    after = ctx.extra["activation_sparsity_per_layer"]  # reported after the thresholds
    for n in ("relu1", "relu2"):
        assert after[n] == pytest.approx(before[n] + 0.1, abs=0.02)
    assert activation_sparsity_per_layer(m, tiny_data) == after


def test_bad_activation_input(tiny, tiny_data):
    with pytest.raises(EffdnnError, match="matches no activation layer"):
        ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 0.5, "layers": ["gelu*"]}, _ctx(tiny_data))
    with pytest.raises(EffdnnError, match="target"):
        ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 1.0}, _ctx(tiny_data))
    with pytest.raises(EffdnnError, match="no ReLU"):
        ACTIVATION_SPARSITY.apply(nn.Sequential(nn.Linear(2, 2)), {"method": "l1", "weight": 1.0}, _ctx(tiny_data))


def test_fatrelu_agp_schedule_raises_thresholds_to_the_target(tiny, tiny_data):
    """schedule: agp starts from plain ReLUs and recalibrates n times along the cubic AGP targets; at the
    end of the ramp the layers sit at the target sparsity (weights untouched here: no optimizer step)."""
    from effdnn.prune.activation import GradualFATReLU
    from effdnn.prune.schedules import agp_sparsity
    from effdnn.train import TrainSpec

    ctx = _ctx(tiny_data)
    ctx.finetune = TrainSpec(epochs=2)
    ctx.steps_per_epoch = lambda spec: 10  # type: ignore[method-assign]
    m = ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 0.9, "schedule": "agp", "end": 0.5, "steps": 5}, ctx)
    assert float(m.relu1.threshold) == 0.0 and float(m.relu2.threshold) == 0.0  # plain ReLUs at first
    cb = next(c for c in ctx.callbacks if isinstance(c, GradualFATReLU))
    assert cb.dt == 2  # 0.5 x 20 steps / 5 recalibrations
    seen = []
    for _ in range(20):
        cb.after_step(m, None)
        seen.append(float(m.relu2.threshold))
    # recalibrations at steps 2, 4, ..., 10 to targets 0.44, 0.71, 0.84, 0.89, 0.9 (a plain ReLU already
    # sparser than a target keeps threshold 0), then the thresholds stay
    assert seen[0] == 0.0 and 0 < seen[5] < seen[9]
    assert all(b >= a for a, b in zip(seen, seen[1:])) and seen[9:] == [seen[9]] * 11
    assert agp_sparsity(10, 0.9, n=5, dt=2) == pytest.approx(0.9)
    got = activation_sparsity_per_layer(m, tiny_data)
    assert got["relu1"] == pytest.approx(0.9, abs=0.01) and got["relu2"] == pytest.approx(0.9, abs=0.01)
    with pytest.raises(EffdnnError, match="finetune"):
        ACTIVATION_SPARSITY.apply(tiny, {"method": "fatrelu", "target": 0.9, "schedule": "agp"}, _ctx(tiny_data))

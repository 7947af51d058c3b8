import copy

import numpy as np
import pytest
import torch
from torch import nn

import effdnn
from effdnn.export.onnx import run_onnx
from effdnn.models import build_model
from effdnn.prune.structured import StructuredConfig, channel_groups, prune_channels


def _silence(bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """Make the given channels' BN output exactly 0 (so after ReLU / in a sum they contribute nothing)."""
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = 0.0


def test_surgery_keeps_the_outputs_of_the_unpruned_channels(tiny):
    x = torch.randn(4, 1, 8, 8)
    drop1, drop2 = [1, 4, 6], [0, 3, 7, 9, 11]
    _silence(tiny.bn1, drop1)
    _silence(tiny.bn2, drop2)
    ref = copy.deepcopy(tiny)
    keep1 = [c for c in range(8) if c not in drop1]
    with torch.no_grad():
        ref_a1 = ref.relu1(ref.bn1(ref.conv1(x)))[:, keep1]
        want = ref(x)
    # bn_gamma saliency: the silenced channels (gamma 0) are the lowest and get removed
    info = prune_channels(tiny, x, StructuredConfig(saliency="bn_gamma", sparsity=0.4))
    assert tiny.conv1.out_channels == 5 and tiny.bn1.num_features == 5 and tiny.conv2.in_channels == 5
    assert tiny.conv2.out_channels == 7 and tiny.fc.in_features == 7 * 16
    with torch.no_grad():
        torch.testing.assert_close(tiny.relu1(tiny.bn1(tiny.conv1(x))), ref_a1, rtol=0, atol=0)
        torch.testing.assert_close(tiny(x), want, rtol=1e-5, atol=1e-6)
    assert [g["kept"] for g in info["groups"]] == [5, 7]
    assert info["kept_whole"][0]["why"] == "model output"


def test_residual_channels_are_coupled_and_outputs_kept():
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8).eval()
    x = torch.randn(2, 1, 8, 8)
    groups = channel_groups(m, x)
    stage1 = next(g for g in groups if "stem.0" in g.producers)
    assert sorted(stage1.producers) == ["layers.0.conv2", "stem.0"]  # stem and the block's residual branch
    assert {c for c, _ in stage1.consumers} >= {"layers.0.conv1", "layers.1.conv1", "layers.1.shortcut.0"}
    # silence the same channels in every member of the coupled group: removing them changes nothing
    drop = [2, 5]
    for norm, _ in stage1.norms:
        _silence(m.get_submodule(norm), drop)
    want = m(x)
    cfg = StructuredConfig(saliency="bn_gamma", sparsity=0.25, layers=["stem.0", "layers.0.conv2"])
    prune_channels(m, x, cfg)
    assert m.stem[0].out_channels == 6 and m.layers[0].conv2.out_channels == 6 and m.layers[0].conv1.in_channels == 6
    assert m.layers[1].shortcut[0].in_channels == 6 and m.layers[1].conv1.in_channels == 6
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)


def test_structured_resnet20_halves_channels_exports_and_cuts_macs(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (28, 28), depth=20, width=16).eval()
    x = torch.randn(2, 1, 28, 28)
    y = torch.randint(0, 10, (2,))
    before = effdnn.cost(m, x).macs
    m = effdnn.prune(m, {"method": "channel", "saliency": "l1", "sparsity": 0.5}, [(x, y)])
    widths = sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)})
    assert widths == [8, 16, 32]
    after = effdnn.cost(m, x).macs
    assert before / after == pytest.approx(4.0, rel=0.02)
    path = effdnn.export_onnx(m, x, tmp_path / "r.onnx")
    np.testing.assert_allclose(run_onnx(path, x), m(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("saliency", ["taylor", "obd", "magnitude"])
def test_data_driven_channel_saliencies_run(tiny, tiny_data, saliency):
    tiny = effdnn.prune(tiny, {"method": "channel", "saliency": saliency, "sparsity": 0.5}, tiny_data)
    assert tiny.conv1.out_channels == 4 and tiny.conv2.out_channels == 6
    assert tiny(tiny_data[0][0]).shape == (16, 5)


def test_concatenated_branches_are_pruned_through_an_offset_map():
    """torch.cat used to keep its branches whole; now each branch loses its own channels and the
    reader's columns follow them (unpruned channels give the same output)."""
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))

    torch.manual_seed(0)
    m = Cat()
    with torch.no_grad():  # the two weakest filters of each branch are dead: removing them changes nothing
        m.a.weight[[1, 3]] = 0.0
        m.a.bias[[1, 3]] = 0.0
        m.b.weight[[0, 2]] = 0.0
        m.b.bias[[0, 2]] = 0.0
    x = torch.randn(2, 1, 4, 4)
    want = m(x)
    info = prune_channels(m, x, StructuredConfig(sparsity=0.5))
    assert m.a.out_channels == 2 and m.b.out_channels == 2 and m.fc.in_features == 4
    torch.testing.assert_close(m(x), want)
    assert [g["kept"] for g in info["groups"]] == [2, 2]


def test_unknown_op_keeps_its_channels_whole_and_says_so():
    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(1, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.cumsum(self.a(x), 1).mean((2, 3)))

    from effdnn.errors import EffdnnError

    m, x = Cum(), torch.randn(2, 1, 4, 4)
    with pytest.warns(UserWarning, match=r"kept whole a \(4 channels\): op cumsum"):
        info = prune_channels(m, x, StructuredConfig(sparsity=0.5))
    assert m.a.out_channels == 4 and info["achieved_channel_reduction"] == 0.0
    with pytest.raises(EffdnnError, match="kept whole a .*strict"):
        prune_channels(m, x, StructuredConfig(sparsity=0.5, strict=True))


def test_layer_sparsity_sets_a_groups_ratio(tiny):
    """layer_sparsity: the first pattern matching a producer of a group sets its ratio; the others take
    'sparsity'; a pattern that matches no pruned layer or a ratio outside [0, 1) is one clear error."""
    x = torch.randn(2, 1, 8, 8)
    info = prune_channels(tiny, x, StructuredConfig(sparsity=0.25, layer_sparsity={"conv1": 0.5, "conv*": 0.0}))
    assert [g["kept"] for g in info["groups"]] == [4, 12]  # conv1: 8 -> 4 by its own entry; conv2 by "conv*"
    assert tiny(x).shape == (2, 5)
    from effdnn.errors import EffdnnError

    with pytest.raises(EffdnnError, match="matches no pruned layer"):
        prune_channels(copy.deepcopy(tiny), x, StructuredConfig(sparsity=0.25, layer_sparsity={"fc*": 0.5}))
    with pytest.raises(EffdnnError, match=r"layer_sparsity.*\[0, 1\)"):
        effdnn.prune(copy.deepcopy(tiny), {"method": "channel", "sparsity": 0.25, "layer_sparsity": {"conv1": 1.0}})


def test_group_l1_removes_the_channels_nobody_reads(tiny):
    """Channels of conv2 whose fc columns are zero are dead: group_l1 (which sees the consumer) removes
    them and the output does not move; l1 looks at conv2's filters alone and removes others."""
    x = torch.randn(4, 1, 8, 8)
    dead = [2, 5, 9]
    with torch.no_grad():
        tiny.conv2.weight.mul_(10.0 / tiny.conv2.weight.abs().sum((1, 2, 3), keepdim=True))  # every filter L1 = 10 ...
        tiny.conv2.weight[dead] *= 1.5  # ... the dead ones the largest
        tiny.fc.weight.view(5, 12, 16)[:, dead] = 0.0
    by_filter = copy.deepcopy(tiny)
    want = tiny(x)
    cfg = dict(sparsity=0.25, layers=["conv2"])
    info = prune_channels(tiny, x, StructuredConfig(saliency="group_l1", **cfg))
    assert info["groups"] == [{"producers": ["conv2"], "channels": 12, "kept": 9}]
    assert (tiny.fc.weight != 0).all()  # the zero columns went with their channels
    torch.testing.assert_close(tiny(x), want, rtol=1e-5, atol=1e-6)
    prune_channels(by_filter, x, StructuredConfig(saliency="l1", **cfg))
    assert (by_filter.fc.weight == 0).any()  # l1 kept the dead channels (largest filters)


def test_group_l1_on_a_residual_network():
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8).eval()
    m = effdnn.prune(m, {"method": "channel", "saliency": "group_l1", "sparsity": 0.5}, [torch.randn(2, 1, 8, 8)])
    assert sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)}) == [4, 8, 16]
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_recalibrate_batchnorm_sets_the_cumulative_batch_statistics():
    """Running mean = the average of the batch means, running var = the average of the (unbiased) batch
    variances, over the given batches; momentum, modes and weights are restored / untouched."""
    from effdnn.utils.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU()).train()
    batches = [torch.randn(8, 1, 6, 6) * (i + 1) for i in range(3)]
    w = m[0].weight.detach().clone()
    assert recalibrate_batchnorm(m, batches, limit=2) == 2
    with torch.no_grad():
        pre = [m[0](x) for x in batches[:2]]
    mean = torch.stack([p.mean((0, 2, 3)) for p in pre]).mean(0)
    var = torch.stack([p.transpose(0, 1).reshape(3, -1).var(1) for p in pre]).mean(0)
    torch.testing.assert_close(m[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert m[1].momentum == 0.3 and m.training and m[1].training and torch.equal(m[0].weight, w)


def test_bn_recalibration_after_surgery_centres_every_batchnorm_on_the_data():
    """After channel surgery with adaptive BN on one calibration batch, every BatchNorm's output on that
    batch (eval mode) has per-channel mean = its beta: the statistics describe the pruned network."""
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8)
    x = torch.randn(128, 1, 8, 8)
    with torch.no_grad():  # train a little so the stored statistics are the dense network's, not (0, 1)
        m.train()
        for _ in range(3):
            m(x)
    m.eval()

    def centring_error(recalibrate: int) -> float:
        pruned = effdnn.prune(copy.deepcopy(m), {"method": "channel", "saliency": "group_l1", "sparsity": 0.5,
                                                  "bn_recalibration": recalibrate}, [x])
        outs = {}
        hooks = [bn.register_forward_hook(lambda mod, a, o: outs.__setitem__(mod, o))
                 for bn in pruned.modules() if isinstance(bn, nn.BatchNorm2d)]
        with torch.no_grad():
            pruned(x)
        for h in hooks:
            h.remove()
        assert len(outs) >= 7
        return max(float((o.mean((0, 2, 3)) - bn.bias.detach()).abs().max()) for bn, o in outs.items())

    # not exactly 0: while recalibrating, the BatchNorms upstream normalise by the biased batch variance,
    # in eval mode by the unbiased running one (a factor sqrt(n / (n - 1)), n = 128 x 2 x 2 in the last stage)
    assert centring_error(4) < 5e-3  # 1.4e-3 here
    assert centring_error(0) > 0.05  # the stored statistics were the dense network's


def test_recalibrate_batchnorm_without_batches_is_an_error_and_keeps_the_statistics():
    from effdnn.errors import EffdnnError
    from effdnn.utils.batchnorm import recalibrate_batchnorm

    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        m[1].running_mean.fill_(3.0)
    with pytest.raises(EffdnnError, match="no batch"):
        recalibrate_batchnorm(m, [], limit=4)
    assert m[1].running_mean.tolist() == [3.0, 3.0] and m[1].momentum == 0.1


def test_pruning_keeps_each_modules_train_or_eval_mode():
    """The pass runs in eval mode (BatchNorm statistics untouched) and every module gets its own mode
    back, mixed modes included."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    m.train()
    m[1].eval()
    before = [mod.training for mod in m.modules()]
    with torch.no_grad():
        m[0].weight[4:] *= 1e-3  # the last 4 filters go (l1)
    stats = m[1].running_mean.clone()
    prune_channels(m, torch.randn(2, 3, 6, 6), StructuredConfig(sparsity=0.5))
    assert [mod.training for mod in m.modules()] == before
    torch.testing.assert_close(m[1].running_mean, stats[:4])  # sliced, not updated by the traced pass

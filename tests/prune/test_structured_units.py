"""Structured pruning's units beyond single channels: whole attention heads (nn.MultiheadAttention,
against heads removed by hand), grouped convolutions (narrower groups, against the dense model with the
same channels zeroed), and the global ratio (scope: global)."""
import copy

import pytest
import torch
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.prune.grouped import prefer_narrow, removed_count
from effdnn.prune.groups import Group
from effdnn.prune.structured import StructuredConfig, global_ratios, prune_channels


class Attn(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.need_weights = need_weights
        self.inp = nn.Linear(6, 32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=self.need_weights)
        return self.out(a)


def _heads_by_hand(m: Attn, keep: list[int]) -> Attn:
    """The slow reference: a new nn.MultiheadAttention with the kept heads' q / k / v rows, their
    input columns and out-projection columns copied (head_dim 8), the input layer's rows with them."""
    idx = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in keep])
    ref = copy.deepcopy(m)
    e = len(idx)
    ref.mha = nn.MultiheadAttention(e, len(keep), batch_first=True)
    with torch.no_grad():
        w = m.mha.in_proj_weight.reshape(3, 32, 32)[:, idx][:, :, idx]
        ref.mha.in_proj_weight.copy_(w.reshape(3 * e, e))
        ref.mha.in_proj_bias.copy_(m.mha.in_proj_bias.reshape(3, 32)[:, idx].reshape(-1))
        ref.mha.out_proj = nn.Linear(e, 32)  # its outputs (the next layer's inputs) all stay
        ref.mha.out_proj.weight.copy_(m.mha.out_proj.weight[:, idx])
        ref.mha.out_proj.bias.copy_(m.mha.out_proj.bias)
        ref.inp = nn.Linear(6, e)
        ref.inp.weight.copy_(m.inp.weight[idx])
        ref.inp.bias.copy_(m.inp.bias[idx])
    return ref.eval()


@pytest.mark.parametrize("need_weights", [False, True])  # scaled-dot-product path / bmm path
def test_multihead_attention_loses_whole_heads_as_removed_by_hand(need_weights):
    torch.manual_seed(0)
    m = Attn(need_weights).eval()
    with torch.no_grad():  # heads 1 and 3 read from weak input channels: l1 removes them
        for h in (1, 3):
            m.inp.weight[h * 8:h * 8 + 8] *= 1e-3
    x = torch.randn(2, 7, 6)
    ref = _heads_by_hand(m, [0, 2])
    info = prune_channels(m, x, StructuredConfig(sparsity=0.5, layers=["inp"]))
    assert (m.mha.num_heads, m.mha.head_dim, m.mha.embed_dim) == (2, 8, 16)
    assert m.mha.in_proj_weight.shape == (48, 16) and m.mha.out_proj.weight.shape == (32, 16)
    assert info["groups"][0]["channels"] == 4 and info["groups"][0]["kept"] == 2  # the units are heads
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_attention_keeps_at_least_one_head():
    torch.manual_seed(0)
    m = Attn(False).eval()
    x = torch.randn(2, 7, 6)
    prune_channels(m, x, StructuredConfig(sparsity=0.95, layers=["inp"]))
    assert m.mha.num_heads == 1 and m.mha.head_dim == 8
    assert m(x).shape == (2, 7, 5)


class NoHeadAttr(nn.Module):
    """Attention whose head count is a constant of its code: its heads cannot be removed."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
        self.o = nn.Linear(16, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, 2, 8).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.o(a.transpose(1, 2).reshape(b, n, 16))


def test_attention_without_a_head_count_attribute_keeps_its_heads_and_says_so():
    torch.manual_seed(0)
    m = NoHeadAttr().eval()
    x = torch.randn(2, 5, 8)
    with pytest.warns(UserWarning, match=r"kept whole q, k, v .*attention heads of the model: no head-count"):
        prune_channels(m, x, StructuredConfig(sparsity=0.5))
    assert m.q.out_features == 16 and m(x).shape == (2, 5, 8)


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)  # 4 groups of 4
        self.c = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_grouped_convolution_loses_the_same_channels_in_every_group():
    """At 25% of 4 groups of 4, one group fewer and one channel per group tie: narrower groups: position 1 of every input group and position 2 of every output group go, the group
    count stays, and the output equals the dense model's with those channels zeroed."""
    torch.manual_seed(0)
    m = GroupedNet().eval()
    weak_in, weak_out = [1, 5, 9, 13], [2, 6, 10, 14]
    with torch.no_grad():
        m.a.weight[weak_in] *= 1e-3
        m.b.weight[weak_out] *= 1e-3
    ref = copy.deepcopy(m)
    with torch.no_grad():  # the slow reference: the removed channels silenced in the dense model
        ref.a.weight[weak_in] = 0
        ref.a.bias[weak_in] = 0
        ref.b.weight[weak_out] = 0
        ref.b.bias[weak_out] = 0
    x = torch.randn(2, 3, 8, 8)
    prune_channels(m, x, StructuredConfig(sparsity=0.25))
    assert (m.b.groups, m.b.in_channels, m.b.out_channels) == (4, 12, 12)
    assert m.b.weight.shape == (12, 3, 3, 3) and m.a.out_channels == 12 and m.c.in_channels == 12
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_grouped_split_choice():
    """Never less than requested. ``nearest``: the smaller removed share that reaches the ratio (ties:
    narrower groups); neither reaching it, the larger. ``narrower`` / ``fewer``: always that split,
    except a depthwise convolution (one input per group), which only loses whole groups."""
    assert removed_count(55, 0.3) == 17 and removed_count(8, 0.3) == 3 and removed_count(10, 0.3) == 3
    assert removed_count(2, 0.9) == 1  # a group keeps one unit
    near = "nearest"
    assert prefer_narrow(2, 16, 0.3, near)  # one group of two is 50%; 5 of 16 per group 31%
    assert prefer_narrow(4, 4, 0.25, near)  # a tie: one group, or one channel per group
    assert not prefer_narrow(32, 4, 0.3, near)  # ResNeXt's 32x4d: 10 of 32 groups (31%), not 2 of 4 (50%)
    assert not prefer_narrow(55, 8, 0.3, near)  # RegNetY-400MF: 17 of 55 groups (30.9%), not 3 of 8 (37.5%)
    assert not prefer_narrow(64, 2, 0.3, near)  # 2 per group at 30%: one of two would be 50%
    assert prefer_narrow(2, 4, 0.8, near)  # neither reaches 80%: 3 of 4 per group (75%) beats one group (50%)
    assert not prefer_narrow(3, 2, 0.8, near)  # 2 of 3 groups (67%) beats one of two per group (50%)
    assert prefer_narrow(55, 8, 0.3) and prefer_narrow(32, 4, 0.3)  # the default: narrower groups
    assert not prefer_narrow(2, 16, 0.3, "fewer")
    for policy in ("narrower", "fewer", "nearest"):
        assert not prefer_narrow(16, 1, 0.3, policy)  # depthwise: only whole groups


class TenGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 40, 1)
        self.b = nn.Conv2d(40, 40, 3, padding=1, groups=10)  # 10 groups of 4
        self.c = nn.Conv2d(40, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("policy, groups, channels", [("narrower", 10, 20), ("fewer", 7, 28), ("nearest", 7, 28)])
def test_grouped_policy(policy, groups, channels):
    """30% of 10 groups of 4: narrower groups lose 2 of 4 positions in every group (50%); fewer groups
    lose 3 of 10 groups (30%), which is also the nearest share reaching 30%."""
    torch.manual_seed(0)
    m = TenGroups().eval()
    info = prune_channels(m, torch.randn(2, 3, 8, 8), StructuredConfig(sparsity=0.3, grouped=policy))
    assert (m.b.groups, m.b.in_channels, m.b.out_channels, m.a.out_channels) == (groups, channels, channels, channels)
    assert info["mac_reduction"] > 1.0 and m(torch.randn(1, 3, 8, 8)).shape == (1, 6, 8, 8)


class EightPairs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=8)  # 8 groups of 2
        self.c = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_grouped_convolution_loses_whole_groups_never_fewer_than_asked():
    """30% of 8 groups of 2, ``grouped: fewer``: 3 whole groups (37.5%; to the nearest it would be 2, 25%); the weakest
    groups go, the group count shrinks, the output equals the dense model's with those groups
    silenced, and the report says 5 of 8 units kept."""
    torch.manual_seed(0)
    m = EightPairs().eval()
    weak = [2, 3, 8, 9, 12, 13]  # groups 1, 4 and 6
    with torch.no_grad():
        m.a.weight[weak] *= 1e-3
        m.b.weight[weak] *= 1e-3
    ref = copy.deepcopy(m)
    with torch.no_grad():
        for conv in (ref.a, ref.b):
            conv.weight[weak] = 0
            conv.bias[weak] = 0
    x = torch.randn(2, 3, 8, 8)
    info = prune_channels(m, x, StructuredConfig(sparsity=0.3, grouped="fewer"))
    assert (m.b.groups, m.b.in_channels, m.b.out_channels) == (5, 10, 10)
    assert m.a.out_channels == 10 and m.c.in_channels == 10
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
    assert [(g["channels"], g["kept"]) for g in info["groups"]] == [(8, 5)]  # units: whole groups


def test_global_scope_compares_normalised_saliencies_across_groups():
    """Group 0 has 6 units far below its mean, group 1 is uniform: one global threshold over the
    mean-normalised scores takes those 6 and 2 of group 1 (8 of 16), where per-group takes 4 + 4."""
    score = torch.ones(16).numpy()
    score[:6] = 0.01
    score[6:8] = 10.0
    groups = [Group(["x"], units=list(range(8))), Group(["y"], units=list(range(8, 16)))]
    assert global_ratios(groups, score, 0.5) == [6 / 8, 2 / 8]
    assert global_ratios(groups, score, 0.99) == [7 / 8, 7 / 8]  # a group keeps one unit


def test_global_scope_on_a_model_removes_the_requested_share_overall():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[0].weight[:6] *= 1e-3
    x = torch.randn(2, 3, 10, 10)
    info = prune_channels(m, x, StructuredConfig(sparsity=0.5, scope="global"))
    assert [g["kept"] for g in info["groups"]] == [2, 6]
    assert m(x).shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match="scope: group"):
        StructuredConfig(sparsity=0.5, scope="global", layer_sparsity={"0": 0.2})
    with pytest.raises(EffdnnError):
        import effdnn

        effdnn.prune(m, {"method": "channel", "sparsity": 0.5, "scope": "everywhere"}, [x])

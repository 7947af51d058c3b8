import pytest
import torch

from effdnn.errors import EffdnnError
from effdnn.prune.masks import channel_keep, check_sparsity, global_masks, nm_mask, topk_mask


def test_topk_mask_cuts_the_smallest_scores():
    s = torch.tensor([[0.5, -3.0, 2.0], [0.1, 4.0, 1.0]])
    keep = topk_mask(s.abs(), 0.5)  # 3 of 6 cut: 0.1, 0.5, 1.0
    assert keep.tolist() == [[False, True, True], [False, True, False]]


def test_topk_mask_ties_broken_by_position_and_keeps_one():
    assert topk_mask(torch.ones(4), 0.5).tolist() == [False, False, True, True]
    assert topk_mask(torch.tensor([1.0, 2.0]), 0.99).tolist() == [False, True]  # never empties a layer


def test_global_masks_use_one_threshold():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.5, 10.0])}
    m = global_masks(scores, 0.5)  # cut 0.5, 1, 2
    assert m["a"].tolist() == [False, False, True, True]
    assert m["b"].tolist() == [False, True]


def test_nm_mask_two_of_four():
    s = torch.tensor([[1.0, 5.0, 3.0, 2.0, 9.0, 8.0, 0.0, 7.0]])
    assert nm_mask(s, 2, 4).int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]


def test_nm_mask_on_conv_weight_groups_along_the_reduction_dim():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)  # rows of 36 = 9 groups of 4
    keep = nm_mask(w.abs(), 2, 4).reshape(6, -1, 4)
    assert (keep.sum(-1) == 2).all()
    # each kept pair is the two largest of its group
    groups = w.abs().reshape(6, -1, 4)
    kept_min = torch.where(keep, groups, torch.inf).min(-1).values
    cut_max = torch.where(~keep, groups, -torch.inf).max(-1).values
    assert (kept_min >= cut_max).all()


def test_nm_mask_tail_group():
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])  # tail group of one keeps it
    assert nm_mask(s, 2, 4).int().tolist() == [[0, 0, 1, 1, 1]]


def test_channel_keep_rounds_up():
    s = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4])
    assert channel_keep(s, 0.5).tolist() == [1, 3, 4, 6]
    assert channel_keep(s, 0.75, round_to=4).tolist() == [1, 3, 4, 6]


def test_channel_keep_at_least_removes_never_less_than_asked():
    """55 coarse units at 30%: 16.5 rounds to 16 removed (29.1%), at_least removes 17 (30.9%), the
    lowest scores first; an exact count is not pushed up by float error; one unit always stays."""
    s = torch.arange(55, dtype=torch.float32)
    assert len(channel_keep(s, 0.3)) == 39
    assert channel_keep(s, 0.3, at_least=True).tolist() == list(range(17, 55))
    assert len(channel_keep(torch.ones(100), 0.07, at_least=True)) == 93  # 100 * 0.07 = 7.000000000000001
    assert len(channel_keep(torch.ones(2), 0.9, at_least=True)) == 1


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_sparsity_outside_range_is_an_error(bad):
    with pytest.raises(EffdnnError, match=r"\[0, 1\)"):
        check_sparsity(bad)
    with pytest.raises(EffdnnError):
        topk_mask(torch.ones(3), bad)


def test_tiebreak_orders_equal_scores():
    s = torch.tensor([0.0, 0.0, 0.0, 1.0])
    tb = torch.tensor([3.0, 1.0, 2.0, 0.0])
    assert topk_mask(s, 0.5, tb).tolist() == [True, False, False, True]
    m = global_masks({"a": s[:2], "b": s[2:]}, 0.5, {"a": tb[:2], "b": tb[2:]})
    assert m["a"].tolist() == [True, False] and m["b"].tolist() == [False, True]

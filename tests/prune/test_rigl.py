"""RigL (Evci et al. 2020): the drop-fraction schedule, one update on hand-made tensors, the callback as the
training loop drives it (counts kept, grown weights at zero with cleared momentum, resume), a real fit."""
import math

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.prune import rigl_drop_fraction, rigl_update, sparse_layers
from effdnn.prune.rigl import RigL
from effdnn.prune.sparse import make_sparse
from tests.prune.driving import drive_callback


def test_drop_fraction_is_cosine_annealed():
    """Eq. 1: alpha / 2 (1 + cos(pi (t - t0) / (t1 - t0))), zero outside (t0, t1]."""
    assert rigl_drop_fraction(10, 10, 110, 0.3) == 0.0  # not before the first update
    assert rigl_drop_fraction(11, 10, 110, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi / 100)))
    assert rigl_drop_fraction(60, 10, 110, 0.3) == pytest.approx(0.15)
    assert rigl_drop_fraction(110, 10, 110, 0.3) == pytest.approx(0.0, abs=1e-12)
    assert rigl_drop_fraction(111, 10, 110, 0.3) == 0.0


def test_updates_come_steps_times_before_end():
    cb = RigL([], 0.3, (10, 110), 4)  # dT = 100 // 5 = 20
    assert [t for t in range(200) if cb.due(t)] == [30, 50, 70, 90]
    cb = RigL([], 0.3, (0, 3), 10)  # more updates asked than steps: one per step, still before t1
    assert [t for t in range(10) if cb.due(t)] == [1, 2]


def test_update_drops_smallest_weights_and_grows_largest_gradients():
    w = torch.tensor([[0.5, -0.1, 0.0, 0.0, 2.0, 0.3]])
    mask = torch.tensor([[True, True, False, False, True, True]])
    grad = torch.tensor([[9.0, 0.0, 5.0, 1.0, 9.0, 0.0]])  # kept weights' gradients play no part
    new = rigl_update(w, mask, grad, 2)  # out: -0.1 and 0.3 (smallest |w|); in: positions 2 and 3
    assert new.tolist() == [[True, False, True, True, True, False]]
    grad[0, 1] = 7.0  # a just-dropped weight with a large gradient comes straight back
    assert rigl_update(w, mask, grad, 2).tolist() == [[True, True, True, False, True, False]]
    assert int(rigl_update(w, mask, grad, 100).sum()) == 4  # k is capped; the count never changes
    assert torch.equal(rigl_update(w, mask, grad, 0), mask)


def _drive(resume_at: int | None = None):
    """One 8-weight layer at 50%, SGD with momentum, RigL updates at steps 2 and 4 of 6 (t0 0, t1 6,
    2 updates, so dT = 6 // 3 = 2; alpha 0.5): the loss pulls hardest on the cut weights 6 and 7."""
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 5.0, 6.0]])

    def fresh():
        layer = nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]]))
        make_sparse(layer, layer.weight != 0)
        model = nn.Sequential(layer)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        cb = RigL(["0"], 0.5, (0, 6), 2)
        cb.on_fit_start(model, opt)
        return model, cb, opt

    def snapshot(model, opt):
        return (model[0].weight.detach().clone().view(-1), model[0].weight_mask.clone().view(-1),
                opt.state[model[0].weight]["momentum_buffer"].clone().view(-1))

    return drive_callback(fresh, 6, lambda model, i: ((model[0].weight - target) ** 2).sum(), snapshot, resume_at)


def test_callback_moves_connections_on_schedule():
    cb, seen = _drive()
    assert cb.every == 2 and [h["step"] for h in cb.history] == [2, 4]
    # step 2: f = 0.25 * (1 + cos(pi / 3)) = 0.375 of 4 active -> 1 moved: weight 0 (smallest) out, 7 in
    w, mask, mom = seen[1]
    assert mask.tolist() == [False, True, True, True, False, False, False, True]
    assert w[7] == 0 and w[0] == 0  # the grown connection starts at zero, the dropped one is cut
    assert cb.history[0] == {"step": 2, "fraction": 0.375, "moved": 1}
    # step 4: f = 0.25 * (1 + cos(2 pi / 3)) = 0.125 of 4 -> int(0.5) = 0 moved; afterwards the mask is frozen
    assert cb.history[1]["moved"] == 0
    for w, mask, _ in seen:
        assert int(mask.sum()) == 4 and (w[~mask] == 0).all()  # the count stays, cut weights are zero
    assert seen[-1][0][7] > 0  # the grown weight learned
    assert cb.grown == 1 and cb.report()["rigl"]["updates"] == 2


def test_grown_connections_lose_their_optimizer_state():
    """A connection grown back after an earlier drop still has decaying momentum / Adam moments: cleared."""
    from effdnn.prune.rigl import clear_optimizer_state

    w = nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.arange(6.0).view(2, 3) + 1
    opt.step()
    where = torch.tensor([[True, False, False], [False, False, True]])
    before = {k: v.clone() for k, v in opt.state[w].items()}
    clear_optimizer_state(opt, w, where)
    for k in ("exp_avg", "exp_avg_sq"):
        assert (opt.state[w][k][where] == 0).all()
        assert torch.equal(opt.state[w][k][~where], before[k][~where])
    assert torch.equal(opt.state[w]["step"], before["step"])  # not a per-element state


def test_callback_resumes_from_a_checkpoint():
    reference = _drive()[1]
    for resume_at in (0, 1, 2):
        got = _drive(resume_at)[1]
        for a, b in zip(got, reference):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


def test_rigl_finetuning_keeps_sparsity_and_moves_masks(tiny, tiny_data):
    spec = {"method": "magnitude", "sparsity": 0.8, "scope": "global", "schedule": "rigl", "regrow": 0.5,
            "end": 0.8, "steps": 4, "finetune": {"epochs": 4, "lr": 0.01, "optimizer": "adam"}}
    oneshot = {n: m.weight_mask.clone() for n, m in sparse_layers(
        effdnn.prune(__import__("copy").deepcopy(tiny), {"method": "magnitude", "sparsity": 0.8, "scope": "global"})).items()}
    tiny = effdnn.prune(tiny, spec, tiny_data)
    layers = sparse_layers(tiny)
    moved = 0
    for n, m in layers.items():
        assert (m.weight[~m.weight_mask] == 0).all()
        assert int(m.weight_mask.sum()) == int(oneshot[n].sum())  # each layer keeps its count
        moved += int((m.weight_mask & ~oneshot[n]).sum())
    assert moved > 0


@pytest.mark.parametrize("spec, msg", [
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "rigl"}, "fine-tuning"),
    ({"method": "magnitude", "nm": "2:4", "schedule": "rigl"}, "nm"),
    ({"method": "magnitude", "sparsity": 0.5, "regrow": 0.2}, "regrow"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "rigl", "regrow": 1.5}, "regrow"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "rigl", "splice": True}, "splice"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "rigl", "end": 0.9,
      "finetune": {"epochs": 4, "batch_size": 16, "swa": {"epochs": 1, "lr": 0.001}}}, "SWA"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "agp", "end": 0.9,
      "finetune": {"epochs": 4, "batch_size": 16, "swa": {"epochs": 1, "lr": 0.001}}}, "SWA"),
])
def test_bad_rigl_input_is_one_clear_error(tiny, tiny_data, spec, msg):
    with pytest.raises(EffdnnError, match=msg) as e:
        effdnn.prune(tiny, spec, tiny_data)
    assert "\n" not in str(e.value)

"""Masks hold outside effdnn's loop; pruned layers quantize, keep zeros in codes / engine / storage."""
import torch
from torch import nn

import effdnn
from effdnn.prune import make_sparse
from effdnn.prune.sparse import weight_sparsity


def _pruned_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))
    return effdnn.prune(model, {"method": "magnitude", "sparsity": 0.8})


def test_masks_hold_in_a_plain_sgd_loop_with_momentum_and_weight_decay():
    model = _pruned_mlp()
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    assert [int((~k).sum()) for k in masks.values()] == [2048, 320]  # 0.8 of 2560 and of 400
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()  # right after a step: the saved weights are masked
    for n, k in masks.items():
        assert torch.equal(state[f"{n}.weight"] != 0, k & (state[f"{n}.weight"] != 0))
        assert float((state[f"{n}.weight"] == 0).float().mean()) >= 0.8
    assert all(v >= 0.8 for v in weight_sparsity(model).values())  # re-applied before counting
    for n, k in masks.items():
        assert torch.all(model.get_submodule(n).weight[~k] == 0)
    c = effdnn.cost(model, torch.randn(4, 1, 8, 8))
    assert c.weight_sparsity >= 0.8


def test_gradient_accumulation_is_safe():
    model = _pruned_mlp()
    x = torch.randn(8, 1, 8, 8)
    model(x).sum().backward()
    model(x).sum().backward()  # no step in between: no in-place write on a weight a graph holds
    assert model[1].weight.grad is not None


def test_pruned_then_quantized_storage_by_hand():
    layer = nn.Linear(16, 8)
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, :4] = True  # 32 of 128 kept
    model = nn.Sequential(make_sparse(layer, mask))
    q = effdnn.quantize(model, {"method": "ptq", "weight": {"bits": 8, "granularity": "per_channel"}, "act": None},
                        calib_data=[torch.randn(4, 16)])
    m = q[0]
    assert type(m).__name__ == "SparseQuantLinear" and torch.equal(m.weight_mask, mask)
    codes = m.weight_quant.fmt.quantize(m.weight.detach(), m.weight_quant.params)
    assert torch.all(codes[~mask] == 0) and torch.all(codes[mask] != 0)
    # 32 int8 codes + bitmap index (128 bits, < CSR 32 * 4 + 9 * 32) + 8 fp32 scales + 8 fp32 bias
    p = m.effdnn_precision()
    scales = m.weight_quant.storage_bits(128) - 128 * 8
    assert scales == 8 * 32
    assert p.storage_bits == 32 * 8 + 128 + 8 * 32 + 8 * 32


def test_binary_weights_are_zero_where_pruned():
    model = _pruned_mlp()
    for method in ("bwn", "bc", "dorefa"):
        spec = {"method": method, "keep_fp": []} if method != "dorefa" else {"method": method}
        data = [(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))]
        q = effdnn.Experiment(model, {"quantize": spec}, data=data).model  # bc clips in the loop: an Experiment
        for m in q.modules():
            if getattr(m, "weight_quant", None) is not None and hasattr(m, "weight_mask"):
                w = m._q_weight()
                assert torch.all(w[~m.weight_mask] == 0) and torch.all(w[m.weight_mask] != 0), method


def test_int8_engine_keeps_pruned_codes_zero():
    from effdnn.quant.deploy_int8 import to_int8

    model = _pruned_mlp()
    q = effdnn.quantize(model, {"method": "ptq"}, calib_data=[torch.randn(32, 1, 8, 8)])
    engine = to_int8(q)
    x = torch.randn(4, 1, 8, 8)
    ints = [mod.weight().int_repr() for mod in engine.modules() if hasattr(mod, "weight") and callable(mod.weight)]
    assert len(ints) == 2
    for w, k in zip(ints, [model[1].weight_mask, model[3].weight_mask]):
        assert torch.all(w[~k] == 0)
    assert (engine(x) - q(x)).abs().max() < 0.1

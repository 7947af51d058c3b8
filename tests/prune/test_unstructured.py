import numpy as np
import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from effdnn.export.onnx import run_onnx
from effdnn.prune.sparse import sparse_index_bits, sparse_layers
from tests.prune.driving import drive_callback


def _zeros(m):
    return {n: float((l.weight == 0).float().mean()) for n, l in sparse_layers(m).items()}


def test_layerwise_sparsity_is_exact(tiny):
    tiny = effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.75, "scope": "layer"})
    z = _zeros(tiny)
    assert set(z) == {"conv1", "conv2", "fc"}
    for n, frac in z.items():
        numel = dict(tiny.named_modules())[n].weight.numel()
        assert frac == pytest.approx(round(numel * 0.75) / numel)


def test_global_scope_uses_one_threshold(tiny):
    w = {n: l.weight.detach().abs().clone() for n, l in [("conv1", tiny.conv1), ("conv2", tiny.conv2), ("fc", tiny.fc)]}
    tiny = effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.8, "scope": "global"})
    kept = torch.cat([w[n][l.weight != 0] for n, l in sparse_layers(tiny).items()])
    cut = torch.cat([w[n][l.weight == 0] for n, l in sparse_layers(tiny).items()])
    assert kept.min() >= cut.max()
    total = sum(v.numel() for v in w.values())
    assert len(cut) == round(0.8 * total)


def test_lamp_global_keeps_every_layers_largest_weight(tiny):
    """At 99% global, LAMP still keeps each layer's largest weight (it scores 1); the count is exact."""
    w = {n: l.weight.detach().abs().clone() for n, l in [("conv1", tiny.conv1), ("conv2", tiny.conv2), ("fc", tiny.fc)]}
    tiny = effdnn.prune(tiny, {"method": "lamp", "sparsity": 0.99, "scope": "global"})
    for n, l in sparse_layers(tiny).items():
        assert l.weight.detach().abs().flatten()[w[n].argmax()] > 0
    total = sum(v.numel() for v in w.values())
    assert sum(int((l.weight == 0).sum()) for l in sparse_layers(tiny).values()) == round(0.99 * total)


def test_nm_pattern_in_every_layer(tiny):
    tiny = effdnn.prune(tiny, {"method": "magnitude", "nm": "2:4"})
    for l in sparse_layers(tiny).values():
        rows = (l.weight != 0).reshape(l.weight.shape[0], -1)
        full = rows[:, : rows.shape[1] // 4 * 4].reshape(rows.shape[0], -1, 4)
        assert (full.sum(-1) <= 2).all()


def test_masked_weights_stay_zero_through_finetuning_and_export(tiny, tiny_data, tmp_path):
    spec = {"method": "magnitude", "sparsity": 0.9, "scope": "global", "schedule": "agp",
            "finetune": {"epochs": 3, "lr": 0.05, "optimizer": "adam", "weight_decay": 0.01}}
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    tiny = effdnn.prune(tiny, spec, tiny_data)
    layers = sparse_layers(tiny)
    for n, l in layers.items():
        assert torch.equal(l.weight == 0, ~l.weight_mask)  # zero exactly where the mask cuts
    total = sum(l.weight.numel() for l in layers.values())
    zeros = sum(int((l.weight == 0).sum()) for l in layers.values())
    assert zeros == round(0.9 * total)
    assert not torch.equal(before["conv2.weight"], tiny.conv2.weight)  # it did train
    x = tiny_data[0][0]
    tiny.eval()
    path = effdnn.export_onnx(tiny, x, tmp_path / "m.onnx")
    np.testing.assert_allclose(run_onnx(path, x), tiny(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    import onnx
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    w = next(v for k, v in inits.items() if v.shape == tuple(tiny.fc.weight.shape))
    np.testing.assert_array_equal(w == 0, (tiny.fc.weight == 0).numpy())


def test_cost_model_sees_sparse_storage(tiny):
    x = torch.randn(2, 1, 8, 8)
    dense = effdnn.cost(tiny, x)
    tiny = effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.9, "scope": "layer"})
    c = effdnn.cost(tiny, x)
    fc = next(l for l in c.layers if l.name == "fc")
    nnz = int((tiny.fc.weight != 0).sum())
    fmt, idx = sparse_index_bits(tiny.fc.weight_mask)
    assert fc.storage_bytes == pytest.approx((nnz * 32 + idx + 5 * 32) / 8)
    assert c.fp32_size_bytes == dense.fp32_size_bytes  # the mask is not a stored tensor
    assert c.size_bytes < 0.3 * dense.size_bytes
    assert c.weight_sparsity == pytest.approx(0.9, abs=0.01)
    # zero weights and zero activations both skip MACs
    assert fc.effective_macs == pytest.approx(fc.macs * (1 - fc.weight_sparsity) * (1 - fc.activation_sparsity))
    assert fc.weight_sparsity == pytest.approx(0.9, abs=0.01)


def test_index_format_choice():
    m = torch.zeros(4, 100, dtype=torch.bool)
    m[:, :2] = True  # 8 of 400: CSR = 8 * 7 + 5 * 32 = 216 < bitmap 400
    assert sparse_index_bits(m) == ("csr", 216)
    m[:, :50] = True  # bitmap wins
    assert sparse_index_bits(m) == ("bitmap", 400)


@pytest.mark.parametrize("method", ["taylor", "obd"])
def test_data_driven_methods_prune_to_the_target(tiny, tiny_data, method):
    tiny = effdnn.prune(tiny, {"method": method, "sparsity": 0.5}, tiny_data)
    for n, frac in _zeros(tiny).items():
        assert frac == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("spec, msg", [
    ({"method": "magnitude", "sparsity": 1.0}, r"\[0, 1\)"),
    ({"method": "magnitude", "sparsity": -0.2}, r"\[0, 1\)"),
    ({"method": "magnitude", "sparsity": 0.5, "layers": ["encoder.*"]}, "matches no layer"),
    ({"method": "magnitude", "sparsity": 0.5, "exclude": ["nope"]}, "matches no layer"),
    ({"method": "magnitude", "nm": "4:2"}, "N:M|1 <= N < M"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "agp"}, "fine-tuning"),
    ({"method": "magnitude"}, "sparsity"),
    ({"method": "taylor", "sparsity": 0.5}, "data"),
    ({"method": "channel", "sparsity": 1.2}, "less than 1"),
    ({"method": "taylor", "sparsity": 0.5, "schedule": "agp", "splice": True}, "splice"),
    ({"method": "magnitude", "sparsity": 0.5, "splice": True}, "splice"),
])
def test_bad_input_is_one_clear_error(tiny, spec, msg):
    with pytest.raises(EffdnnError, match=msg) as e:
        effdnn.prune(tiny, spec)
    assert "\n" not in str(e.value)


def test_sparse_storage_of_a_quantized_layer_keeps_its_overheads():
    from torch import nn

    from effdnn.cost.precision import LayerPrecision
    from effdnn.prune.sparse import make_sparse

    class Int8Linear(nn.Linear):  # int8 codes + an fp32 scale per row + fp32 bias
        def effdnn_precision(self):
            return LayerPrecision(8, 8, "int", "int", storage_bits=self.weight.numel() * 8 + 2 * 32 * self.out_features)

    layer = Int8Linear(100, 4)
    mask = torch.zeros(4, 100, dtype=torch.bool)
    mask[:, :3] = True
    make_sparse(layer, mask)
    p = layer.effdnn_precision()
    fmt, idx = sparse_index_bits(mask)
    assert (p.weight_bits, p.weight_kind) == (8, "int")
    assert p.storage_bits == 12 * 8 + idx + 2 * 32 * 4


def test_layer_sparsity_overrides(tiny):
    tiny = effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"conv*": 0.25, "fc": 0.9}})
    z = _zeros(tiny)
    assert z["conv1"] == pytest.approx(0.25, abs=0.02) and z["conv2"] == pytest.approx(0.25, abs=0.01)
    assert z["fc"] == pytest.approx(0.9, abs=0.01)
    with pytest.raises(EffdnnError, match="matches no pruned layer"):
        effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"head": 0.9}})
    with pytest.raises(EffdnnError, match="layer_sparsity"):
        effdnn.prune(tiny, {"method": "magnitude", "sparsity": 0.5, "scope": "global", "layer_sparsity": {"fc": 0.9}})


def _drive_splicing(splice: bool, resume_at: int | None = None):
    """A 4-weight layer pruned by AGP to 50% over steps 0-4 of 8 (events cut 1, 2, 2, 2 weights); from
    the second step on, a loss pushes w0 up by 1 per step. The callback is driven as the loop drives it;
    ``resume_at``: after that step, a fresh model / optimizer / callback resume from their state dicts."""
    from torch import nn

    from effdnn.prune.schedules import Plan
    from effdnn.prune.unstructured import ScheduledPruning, UnstructuredConfig

    def fresh():
        layer = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[0.1, 0.2, 3.0, 4.0]]))
        model = nn.Sequential(layer)
        cfg = UnstructuredConfig(method="magnitude", sparsity=0.5, schedule="agp", end=0.5, splice=splice)
        cb = ScheduledPruning(["0"], cfg, Plan("agp", 0.5, 8, 0.0, 0.5, 4), None)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        cb.on_fit_start(model, opt)
        return model, cb, opt

    return drive_callback(fresh, 8, lambda model, i: (-1.0 * min(i, 1) * model(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))).sum(),
                          lambda model, opt: model[0].weight.detach().clone().view(-1).tolist(), resume_at)


def test_splicing_brings_back_a_cut_weight_that_grows():
    """Dynamic Network Surgery: the cut w0 keeps learning from dL/d(W*T) while the layer holds W*T; at
    the events of steps 2 and 3 its unmasked value (1.1, 2.1) is still among the two smallest, at step 4
    (3.1) it outranks 3.0 and is spliced back with its accumulated value. Without splicing its gradient
    is masked and it stays zero."""
    cb, seen = _drive_splicing(True)
    assert seen[0] == pytest.approx([0.0, 0.2, 3.0, 4.0])  # event 1: the smallest weight is cut
    assert seen[2] == pytest.approx([0.0, 0.0, 3.0, 4.0])  # events 2-3: w0 (2.1 unmasked) still cut
    assert seen[3] == pytest.approx([3.1, 0.0, 0.0, 4.0])  # event 4: w0 is back, 3.0 goes
    assert seen[-1] == pytest.approx([7.1, 0.0, 0.0, 4.0])  # the mask is final from step 4
    assert cb.spliced == 1 and cb.report()["spliced_weights"] == 1
    assert cb.dense == {}  # the unmasked copy is dropped once the mask is final
    cb, seen = _drive_splicing(False)
    assert seen[3] == pytest.approx([0.0, 0.0, 3.0, 4.0]) and seen[-1] == seen[3]  # w0 never returns
    assert "spliced_weights" not in cb.report()


def test_splicing_resumes_from_a_checkpoint():
    """The unmasked weights are checkpointed: resuming after step 2 (w0 at 0 in the layer, 1.1 in the
    unmasked copy) gives the uninterrupted run's weights, w0 spliced back at step 4 included."""
    assert _drive_splicing(True, resume_at=1)[1] == _drive_splicing(True)[1]

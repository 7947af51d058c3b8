"""The Python API means what a recipe means: one-shot calls copy and keep their report, Experiment
steps a recipe experiment from a user's own loop (issue 21)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import effdnn
from effdnn.data import load_data
from effdnn.errors import EffdnnError
from effdnn.models import build_model
from effdnn.prune.schedules import agp_sparsity
from effdnn.quant import Quantizer
from effdnn.quant.bn_fold_qat import FoldedBNWeight
from effdnn.quant.methods.pact import PACTActQuantizer
from effdnn.quant.qat_quantizers import QATQuantizer
from effdnn.recipe import parse_recipe
from effdnn.train import evaluate, load_weights
from tests.prune.conftest import TinyNet

AGP = {"method": "magnitude", "sparsity": 0.8, "schedule": "agp", "steps": 4, "end": 1.0}
SGD = {"epochs": 2, "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "schedule": "none", "batch_size": 16}


def _tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


def _items(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _batches(n=64, size=16):
    x, y = _items(n)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _masks(m):
    return {n: l.weight_mask.clone() for n, l in m.named_modules() if hasattr(l, "weight_mask")}


def test_prune_and_quantize_return_copies_and_leave_the_input_alone():
    m = _tiny()
    before, classes = _state(m), [type(x) for x in m.modules()]
    p = effdnn.prune(m, {"method": "magnitude", "sparsity": 0.5})
    c = effdnn.prune(m, {"method": "channel", "sparsity": 0.5}, _batches())
    q = effdnn.quantize(m, {"method": "ptq"}, [x for x, _ in _batches()])
    assert _same(_state(m), before) and [type(x) for x in m.modules()] == classes
    assert p is not m and float((p.conv2.weight == 0).float().mean()) == 0.5 and (m.conv2.weight != 0).all()
    assert (c.conv1.out_channels, c.conv2.out_channels, m.conv1.out_channels) == (4, 6, 8)
    assert isinstance(q.conv1.weight_quant, Quantizer) and getattr(m.conv1, "weight_quant", None) is None


def test_one_shot_report_is_a_dict_on_the_returned_model():
    p = effdnn.prune(_tiny(), {"method": "magnitude", "sparsity": 0.75, "scope": "layer"})
    r = p.effdnn_report
    assert r["techniques"]["prune"]["sparsity"] == 0.75
    assert r["pruned_layers"] == {"conv1": 0.75, "conv2": 0.75, "fc": 0.75}
    q = effdnn.quantize(_tiny(), {"method": "ptq"}, [x for x, _ in _batches()])
    assert q.effdnn_report["calib_batches"] == 4 and len(q.effdnn_report["ptq_layers"]) == 3
    qp = effdnn.prune(q, {"method": "magnitude", "sparsity": 0.5})
    assert set(qp.effdnn_report["techniques"]) == {"prune", "quantize"}  # a chain keeps the earlier fields
    assert qp.effdnn_report["calib_batches"] == 4 and qp.effdnn_report["pruned_layers_sparsity"] == pytest.approx(0.5)
    assert set(q.effdnn_report["techniques"]) == {"quantize"}  # the input's own report is not touched


def test_one_shot_refuses_training_hooks_it_cannot_run_in_one_line():
    x = torch.randn(16, 1, 8, 8)
    for spec, hook in [({"method": "pact"}, "PACTRegulariser.extra_loss"),
                       ({"method": "lsq", "bn_freeze_epoch": 1}, "FreezeBN.on_epoch_start")]:
        with pytest.raises(EffdnnError, match=f"{hook}.*effdnn.Experiment") as e:
            effdnn.quantize(_tiny(), spec, [x])
        assert "\n" not in str(e.value)
    with pytest.raises(EffdnnError, match="ClipLatentWeights.after_step"):
        effdnn.quantize(_tiny(), {"method": "bc"})
    # what needs no loop is applied: no L2 term, or BatchNorm frozen from epoch 0 on (frozen now)
    no_l2 = effdnn.quantize(_tiny(), {"method": "pact", "alpha_decay": 0}, [x])
    assert any(isinstance(m, PACTActQuantizer) for m in no_l2.modules())
    frozen = [m.frozen for m in effdnn.quantize(_tiny(), {"method": "lsq", "bn_freeze_epoch": 0}, [x]).modules()
              if isinstance(m, FoldedBNWeight)]
    assert frozen == [True, True]


def test_missing_data_errors_name_the_argument_of_the_call():
    with pytest.raises(EffdnnError, match=r"pass data=<") as e:
        effdnn.prune(_tiny(), {"method": "channel", "sparsity": 0.5})
    assert "calib_data" not in str(e.value)
    with pytest.raises(EffdnnError, match=r"pass data=<"):
        effdnn.Experiment(_tiny(), {"quantize": {"method": "ptq"}})
    with pytest.raises(EffdnnError, match=r"pass calib_data=<"):
        effdnn.quantize(_tiny(), {"method": "ptq"})


def test_convert_qat_is_public_at_the_top_level():
    from effdnn import convert_qat
    from effdnn.quant.qat import convert_qat as inner

    assert convert_qat is inner and "convert_qat" in effdnn.__all__ and "Experiment" in effdnn.__all__


def _user_loop(exp, ds, epochs, lr, batch_size=16, seed=0):
    """effdnn's fit, written as a user's loop: the same batches (seeded sampler), SGD, cross-entropy."""
    opt = torch.optim.SGD([p for p in exp.model.parameters() if p.requires_grad], lr=lr, momentum=0.0)
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler)
    exp.attach(opt)
    seen = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        exp.model.train()
        exp.epoch(epoch)
        for x, y in loader:
            loss = exp.loss(F.cross_entropy(exp.model(x), y))
            opt.zero_grad(set_to_none=True)
            assert exp.backward(loss, opt)
            exp.step()
            seen.append(float((exp.model.conv2.weight == 0).float().mean()))
    return seen


def test_agp_stepped_from_a_user_loop_matches_effdnns_fit_step_for_step():
    ds = TensorDataset(*_items())
    blocks = {"prune": AGP, "finetune": SGD}
    ours = effdnn.Experiment(_tiny(), blocks, data=ds)
    theirs = effdnn.Experiment(_tiny(), blocks, data=ds)
    seen = _user_loop(ours, ds, epochs=2, lr=0.05)
    theirs.fit()
    a, b = ours.finish(), theirs.finish()
    # 2 epochs x 4 steps; end 1.0: 4 events every 2 steps, the last one on the last step
    expected = [{"step": t, "sparsity": round(agp_sparsity(t, 0.8, n=4, dt=2), 6)} for t in (0, 2, 4, 6, 8)]
    assert ours.report()["prune_schedule"] == theirs.report()["prune_schedule"] == expected
    assert seen[-2] < 0.8 and seen[-1] == pytest.approx(0.8, abs=1 / 864)  # conv2: 864 weights
    assert ours.report()["pruned_layers"] == theirs.report()["pruned_layers"]
    ma, mb = _masks(a), _masks(b)
    assert ma.keys() == {"conv1", "conv2", "fc"} and all(torch.equal(ma[n], mb[n]) for n in ma)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    assert a.effdnn_report == ours.report()


def test_schedules_need_their_step_count_and_all_their_steps():
    gen = (b for b in _batches())
    with pytest.raises(EffdnnError, match="steps_per_epoch="):
        effdnn.Experiment(_tiny(), {"prune": AGP, "finetune": {"epochs": 2}}, data=gen)
    exp = effdnn.Experiment(_tiny(), {"prune": AGP, "finetune": {"epochs": 2}}, data=_batches(), steps_per_epoch=3)
    assert exp.ctx.planned == 3  # the argument wins over len(data) == 4
    opt = torch.optim.SGD(exp.model.parameters(), lr=0.01)
    exp.attach(opt)
    exp.epoch(0)
    for x, y in _batches()[:3]:
        loss = exp.loss(F.cross_entropy(exp.model(x), y))
        opt.zero_grad()
        exp.backward(loss)
        exp.step()
    with pytest.raises(EffdnnError, match="planned for 6 optimizer steps.*3 were stepped"):
        exp.finish()
    with pytest.raises(EffdnnError, match="fine-tuning: add a finetune block"):
        effdnn.Experiment(_tiny(), {"prune": AGP}, data=_batches())


def test_qat_through_experiment_runs_its_hooks_and_converts_on_finish():
    batches = _batches()
    spec = {"method": "pact", "weight": {"bits": 4}, "act": {"bits": 4}, "alpha_decay": 0.01}
    exp = effdnn.Experiment(_tiny(), {"quantize": spec, "finetune": {"epochs": 1}}, data=batches)
    opt = torch.optim.Adam(exp.model.parameters(), lr=1e-3)
    exp.attach(opt)
    exp.epoch(0)
    exp.model.train()
    for x, y in batches:
        task = F.cross_entropy(exp.model(x), y)
        alphas = [m.alpha for m in exp.model.modules() if isinstance(m, PACTActQuantizer)]
        total = exp.loss(task)
        assert float((total - task).detach()) == pytest.approx(0.01 * float(sum(a.detach() ** 2 for a in alphas)), rel=1e-5)
        opt.zero_grad()
        exp.backward(total)
        exp.step()
    model = exp.finish()
    assert model is exp.model and not any(isinstance(m, QATQuantizer) for m in model.modules())
    assert sum(isinstance(m, Quantizer) for m in model.modules()) >= 4
    report = exp.report()
    assert len(report["pact_alpha"]) == len(alphas) and report["techniques"]["quantize"]["alpha_decay"] == 0.01
    assert [r["layer"] for r in report["qat_layers"]] == ["conv1", "conv2", "fc"] and model.effdnn_report == report
    with pytest.raises(EffdnnError, match="not after the experiment is finished"):
        exp.step()


def test_a_loss_scaler_takes_over_backward_through_exp_backward():
    def fresh():
        torch.manual_seed(0)
        return build_model("mlp", 1, 5, (8, 8), hidden=(16,))

    blocks = {"precision": {"train": "fp16", "backend": "emulate", "init_scale": 256.0}, "finetune": {"epochs": 1}}
    exp = effdnn.Experiment(fresh(), blocks, data=_batches(), make_model=fresh)
    opt = torch.optim.SGD(exp.model.parameters(), lr=0.01)
    exp.attach(opt)
    exp.epoch(0)
    x, y = _batches()[0]
    loss = exp.loss(F.cross_entropy(exp.model(x), y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    with pytest.raises(EffdnnError, match=r"LossScaleCallback takes over.*exp.backward\(loss, optimizer\)"):
        exp.step()
    for x, y in _batches():
        loss = exp.loss(F.cross_entropy(exp.model(x), y))
        opt.zero_grad()
        assert exp.backward(loss, opt) is True
        exp.step()
    exp.finish()
    r = exp.report()
    assert (r["optimizer_steps"], r["skipped_steps"], r["loss_scale_final"], r["precision"]) == (4, 0, 256.0, "fp16")


def test_the_same_dict_runs_in_a_recipe_and_in_an_experiment(tmp_path):
    data = {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 128, "n_test": 64}}
    model = {"name": "mlp", "kwargs": {"hidden": [32]}}
    blocks = {"prune": {**AGP, "scope": "global"}, "finetune": {"epochs": 2, "lr": 0.01}}
    recipe = {"name": "api", "device": "cpu", "data": data, "model": model, "baseline": {"epochs": 2, "lr": 0.01},
              "experiments": [{"name": "agp", **blocks}], "output": str(tmp_path / "out")}
    row = effdnn.run(recipe)["experiments"][0]
    bundle = load_data("synthetic", **data["kwargs"])
    base = load_weights(build_model("mlp", 1, 4, (8, 8), hidden=[32]), tmp_path / "out" / "baseline" / "model.pt")
    exp = effdnn.Experiment(base, blocks, data=bundle, batch_size=32)
    exp.fit()
    final = exp.finish()
    report = exp.report()
    assert report["prune_schedule"] == row["prune_schedule"] and len(row["prune_schedule"]) == 5
    assert report["pruned_layers_sparsity"] == row["pruned_layers_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert report["techniques"] == row["techniques"]
    assert evaluate(final, bundle.test, batch_size=512) == row["accuracy"]


@pytest.mark.parametrize("bad, path", [
    ({"prune": {**AGP, "sparsty": 0.5}}, "prune.sparsty: unknown key"),
    ({"finetune": {"epoch": 1}}, "finetune.epoch: unknown key"),
    ({"quantize": {"method": "ptq", "weight": {"bits": 0}}}, "quantize.weight: int format: bits"),
    ({"prunee": {}}, "prunee: unknown key"),
])
def test_a_bad_key_gives_the_recipes_message(bad, path):
    with pytest.raises(EffdnnError) as in_python:
        effdnn.Experiment(_tiny(), bad, data=_batches())
    with pytest.raises(EffdnnError) as in_recipe:
        parse_recipe({"experiments": [{"name": "e", **bad}]})
    assert str(in_python.value).startswith(path)
    assert str(in_recipe.value).endswith(str(in_python.value))  # "[recipe: ]experiments[0]." + the same message


def test_finish_runs_the_finalizers_then_compress(tmp_path):
    blocks = {"prune": {"method": "magnitude", "sparsity": 0.5}, "compress": {"path": str(tmp_path / "m.edc")}}
    exp = effdnn.Experiment(_tiny(), blocks, data=TensorDataset(*_items()))
    assert "pruned_layers_sparsity" not in exp.report()  # a finalizer records it, after fine-tuning
    final = exp.finish()
    r = final.effdnn_report
    assert r["pruned_layers_sparsity"] == pytest.approx(0.5, abs=1e-3) and set(r["techniques"]) == {"prune", "compress"}
    assert r["container"]["bytes"] == (tmp_path / "m.edc").stat().st_size > 0
    pruned = effdnn.prune(_tiny(), blocks["prune"])  # the same weights, before the container
    assert r["accuracy_before_compress"] == evaluate(pruned, TensorDataset(*_items()), batch_size=512)
    with pytest.raises(EffdnnError, match="exp.fit\\(\\) or step"):
        effdnn.Experiment(_tiny(), {"prune": AGP, "finetune": SGD}, data=TensorDataset(*_items())).finish()

"""Stochastic Weight Averaging in fit (TrainSpec.swa; Izmailov et al. 2018, Algorithm 1)."""
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DistributedSampler

from effdnn.data import load_data
from effdnn.prune.sparse import MaskCallback, make_sparse
from effdnn.train import Callback, TrainSpec, fit
from effdnn.train.loop import lr_factor

SWA = {"epochs": 2, "lr": 0.02}


def _bn_model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


class Record(Callback):
    """The weights after every optimizer step (callbacks run before the averager sees the step)."""

    def __init__(self):
        self.seen = []

    def after_step(self, model, optimizer):
        self.seen.append([p.detach().clone() for p in model.parameters()])


def test_lr_is_the_schedule_then_constant_in_the_averaging_phase():
    spec = TrainSpec(epochs=5, lr=0.1, schedule="cosine", swa={"epochs": 2, "lr": 0.01})
    assert spec.schedule_epochs == 3
    assert lr_factor(spec, 0, 10) == 1.0 and lr_factor(spec, 15, 10) == pytest.approx(0.5)  # cosine over 3 epochs
    assert lr_factor(spec, 29, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert [lr_factor(spec, s, 10) for s in (30, 35, 49)] == pytest.approx([0.1, 0.1, 0.1])


def test_swa_config_errors_and_unchanged_dump():
    with pytest.raises(ValidationError, match="must not exceed"):
        TrainSpec(epochs=2, swa={"epochs": 3, "lr": 0.1})
    with pytest.raises(ValidationError):
        TrainSpec(epochs=2, swa={"epochs": 1, "lr": 0.0})
    assert "swa" not in TrainSpec().model_dump()  # cache keys of runs without SWA are unchanged


@pytest.mark.parametrize("every", [1, 3])
def test_model_ends_with_the_mean_of_the_phase_weights_and_their_batchnorm_statistics(every):
    data = load_data("synthetic", n_train=256, n_test=64)
    spec = TrainSpec(epochs=3, optimizer="sgd", lr=0.05, swa={**SWA, "every": every})
    model, rec = _bn_model(), Record()
    res = fit(model, data.train, spec, batch_size=32, seed=4, callbacks=[rec], log=False)
    phase = rec.seen[8:]  # 8 steps per epoch; the last 2 epochs average
    picked = phase[every - 1::every]
    assert res.swa_models == len(picked) == 16 // every
    for i, p in enumerate(model.parameters()):
        assert torch.allclose(p, torch.stack([w[i] for w in picked]).mean(0), atol=1e-6)
    # Algorithm 1's last line: BatchNorm statistics of the averaged weights, one pass over the data
    x = torch.stack([data.train[i][0] for i in range(len(data.train))]).flatten(1)
    h = model[1](x).detach()
    bn = model[2]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    order = DistributedSampler(data.train, num_replicas=1, rank=0, seed=4)  # fit's loader, at epoch `epochs`
    order.set_epoch(3)
    batch_vars = torch.stack([c.var(0) for c in h[list(order)].split(32)])  # cumulative average of batch variances
    assert torch.allclose(bn.running_var, batch_vars.mean(0), rtol=1e-4)


def test_bn_batches_limits_the_recalibration_and_masks_stay_zero():
    data = load_data("synthetic", n_train=256, n_test=64)
    model = _bn_model()
    keep = torch.rand_like(model[1].weight) > 0.7
    make_sparse(model[1], keep)
    spec = TrainSpec(epochs=2, lr=0.01, swa={"epochs": 1, "lr": 0.005, "bn_batches": 2})
    fit(model, data.train, spec, batch_size=32, seed=1, callbacks=[MaskCallback()], log=False)
    assert bool((model[1].weight[~keep] == 0).all()) and bool((model[1].weight[keep] != 0).all())
    assert int(model[2].num_batches_tracked) == 2


def test_resume_in_the_averaging_phase_equals_uninterrupted_run(tmp_path):
    class StopAt(Callback):
        def on_epoch_start(self, model, epoch):
            if epoch == 3:
                raise KeyboardInterrupt

    data = load_data("synthetic", n_train=256, n_test=64)
    spec = TrainSpec(epochs=4, optimizer="sgd", lr=0.05, swa={**SWA, "every": 2, "bn_batches": 3})
    ref = _bn_model()
    fit(ref, data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "ref", log=False)
    with pytest.raises(KeyboardInterrupt):
        fit(_bn_model(), data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "run",
            callbacks=[StopAt()], log=False)
    resumed = _bn_model()
    res = fit(resumed, data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "run", resume=True, log=False)
    assert res.resumed_from == 3 and res.swa_models == 8
    for (k, p), q in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_recipe_with_gradual_pruning_and_swa_ends_sparse_and_reports_the_averaged_sets(tmp_path):
    """The pruning masks appear (as buffers) after fit starts; the average must not mind."""
    import effdnn

    recipe = {
        "name": "swa", "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "kwargs": {"n_train": 256, "n_test": 64, "size": 12}},
        "model": {"name": "resnet", "kwargs": {"depth": 8, "width": 4}},
        "baseline": {"epochs": 1, "lr": 0.003},
        "experiments": [{"name": "agp-swa", "prune": {"method": "lamp", "sparsity": 0.7, "schedule": "agp", "end": 0.5},
                         "finetune": {"epochs": 3, "lr": 0.002, "swa": {"epochs": 1, "lr": 0.001, "every": 4}}}],
    }
    row = effdnn.run(recipe, out=tmp_path)["experiments"][0]
    assert row["swa_models"] == {"agp-swa": 2}  # by training run; 8 steps in the averaging epoch, one set every 4
    assert row["weight_sparsity"] == pytest.approx(0.7, abs=0.01)

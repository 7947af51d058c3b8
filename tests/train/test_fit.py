import pytest
import torch
from torch import nn

from effdnn.data import load_data
from effdnn.errors import EffdnnError
from effdnn.train import Callback, TrainSpec, evaluate, fit, load_weights, save_atomic
from effdnn.train.loop import lr_factor


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, model, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_fit_learns_and_is_deterministic():
    data = load_data("synthetic", n_train=256, n_test=128)
    spec = TrainSpec(epochs=3, lr=0.01)
    a, b = _model(), _model()
    fit(a, data.train, spec, batch_size=32, seed=3, log=False)
    fit(b, data.train, spec, batch_size=32, seed=3, log=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert evaluate(a, data.test) > 0.9


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = load_data("synthetic", n_train=256, n_test=64)
    spec = TrainSpec(epochs=4, optimizer="sgd", lr=0.05, schedule="cosine")
    ref = _model()
    fit(ref, data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "ref", log=False)

    interrupted = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "run",
            callbacks=[StopAt(2)], log=False)
    resumed = _model()
    res = fit(resumed, data.train, spec, batch_size=32, seed=5, checkpoint_dir=tmp_path / "run", resume=True, log=False)
    assert res.resumed_from == 2 and len(res.history) == 4
    for (k, p), q in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    data = load_data("synthetic", n_train=64, n_test=32)
    fit(_model(), data.train, TrainSpec(epochs=1), batch_size=32, checkpoint_dir=tmp_path, log=False)
    with pytest.raises(EffdnnError, match="other settings"):
        fit(_model(), data.train, TrainSpec(epochs=1, lr=0.5), batch_size=32, checkpoint_dir=tmp_path, resume=True, log=False)


def test_nan_loss_is_one_clear_error():
    data = load_data("synthetic", n_train=64, n_test=32)
    m = _model()
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    with pytest.raises(EffdnnError, match="loss became nan"):
        fit(m, data.train, TrainSpec(epochs=1), batch_size=32, log=False)


def test_checkpoint_errors(tmp_path):
    m = _model()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EffdnnError, match="unreadable"):
        load_weights(m, tmp_path / "junk.pt")
    with pytest.raises(EffdnnError, match="not found"):
        load_weights(m, tmp_path / "none.pt")
    save_atomic({"1.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pt")
    with pytest.raises(EffdnnError, match="does not fit"):
        load_weights(m, tmp_path / "wrong.pt")
    sd = m.state_dict()
    sd["1.weight"][0, 0] = float("inf")
    save_atomic(sd, tmp_path / "inf.pt")
    with pytest.raises(EffdnnError, match="NaN or Inf"):
        load_weights(_model(), tmp_path / "inf.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(EffdnnError, match="unreadable"):
        load_weights(_model(), tmp_path / "evil.pt")


def test_lr_schedules():
    cos = TrainSpec(epochs=2, schedule="cosine")
    assert lr_factor(cos, 0, 10) == 1.0 and lr_factor(cos, 10, 10) == pytest.approx(0.5) and lr_factor(cos, 20, 10) == pytest.approx(0)
    step = TrainSpec(epochs=6, schedule="step", step_size=2, gamma=0.5)
    assert [lr_factor(step, e * 10, 10) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    warm = TrainSpec(epochs=4, schedule="none", warmup_epochs=1)
    assert lr_factor(warm, 4, 10) == 0.5 and lr_factor(warm, 10, 10) == 1.0


def test_distillation_loss_is_hintons_objective():
    from effdnn.train.loop import distillation_loss

    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    hard = nn.functional.cross_entropy(s, y)
    T, a = 3.0, 0.7
    pt, ps = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    torch.testing.assert_close(distillation_loss(s, t, hard, a, T), (1 - a) * hard + a * T * T * kl)
    assert float(distillation_loss(s, s, hard, 1.0, T)) == pytest.approx(0.0, abs=1e-6)  # own outputs: nothing to learn


def test_fit_with_distillation_needs_a_teacher_and_learns_from_it():
    from effdnn.train_spec import DistillSpec

    data = load_data("synthetic", n_train=256, n_test=128)
    teacher = _model()
    fit(teacher, data.train, TrainSpec(epochs=3, lr=0.01), batch_size=32, seed=3, log=False)
    spec = TrainSpec(epochs=3, lr=0.01, distill=DistillSpec(alpha=1.0, temperature=2.0))
    with pytest.raises(EffdnnError, match="teacher"):
        fit(_model(), data.train, spec, batch_size=32, seed=3, log=False)
    teacher.train()
    student = _model()
    fit(student, data.train, spec, batch_size=32, seed=3, log=False, teacher=teacher)
    assert teacher.training  # its mode is given back
    assert evaluate(student, data.test) > 0.9  # alpha = 1: the labels never seen, only the teacher


def test_train_spec_dump_without_distill_is_unchanged():
    """Baseline cache keys and experiment keys hash these dumps: an unset distill must not change them."""
    assert "distill" not in TrainSpec().model_dump()
    assert TrainSpec(distill={"alpha": 0.3}).model_dump()["distill"] == {"alpha": 0.3, "temperature": 4.0}


class _Listed(torch.utils.data.Dataset):
    """The same examples as a TensorDataset, but not one: the teacher then runs at every step."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_teacher_outputs_are_computed_once_for_a_fixed_dataset_and_train_alike():
    from effdnn.train_spec import DistillSpec

    data = load_data("synthetic", n_train=256, n_test=64)
    teacher = _model()
    fit(teacher, data.train, TrainSpec(epochs=2, lr=0.01), batch_size=32, seed=3, log=False)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    spec = TrainSpec(epochs=3, optimizer="sgd", lr=0.05, distill=DistillSpec(alpha=0.7, temperature=3.0))
    cached, stepwise = _model(), _model()
    fit(cached, data.train, spec, batch_size=32, seed=3, log=False, teacher=teacher)
    assert calls == [256]  # one pass over the 256 examples, none during the 3 epochs
    calls.clear()
    fit(stepwise, _Listed(data.train), spec, batch_size=32, seed=3, log=False, teacher=teacher)
    assert calls == [32] * 24
    for (k, p), q in zip(cached.state_dict().items(), stepwise.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)
    calls.clear()  # one epoch sees each example once: a table would not pay
    fit(_model(), data.train, spec.model_copy(update={"epochs": 1}), batch_size=32, seed=3, log=False, teacher=teacher)
    assert calls == [32] * 8

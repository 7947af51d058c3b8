from __future__ import annotations

import pytest
import torch

from effdnn.errors import EffdnnError
from effdnn.formats import Granularity, IntFormat
from effdnn.quant.observers import HistogramObserver, KLObserver, MSEObserver, PercentileObserver, make_observer


def test_max_observer_streams_min_max_per_channel() -> None:
    o = make_observer("max", Granularity("per_channel", 1))
    a, b = torch.randn(4, 3, 5), torch.randn(4, 3, 5) * 3
    o.update(a)
    o.update(b)
    both = torch.cat([a, b]).transpose(0, 1).reshape(3, -1)
    assert torch.equal(o.min, both.amin(1)) and torch.equal(o.max, both.amax(1))
    p = o.compute_params(IntFormat(8))
    assert torch.allclose(p.scale, both.abs().amax(1) / 127)


def test_histogram_growth_merges_bins_exactly() -> None:
    o = HistogramObserver(bins=64)
    x1, x2 = torch.rand(1000), torch.rand(1000) * 3.5
    o.update(x1)
    o.update(x2)
    assert o.hist.sum().item() == 2000
    w = float(o.width[0])
    factor = int(torch.ceil(x2.max() / x1.max()))
    assert w == pytest.approx(float(x1.max()) / 64 * factor)  # grew by an integer factor
    direct = torch.bincount(torch.clamp((torch.cat([x1, x2]).double() / w).long(), max=63), minlength=64)
    assert (o.hist[0] - direct.double()).abs().sum() <= 2  # the same histogram (up to edge rounding)


@pytest.mark.parametrize("granularity", [Granularity("per_tensor"), Granularity("per_channel", 0)])
def test_histogram_of_signed_data_counts_abs_values(granularity: Granularity) -> None:
    """Signed data is binned by |x| (truncation of x / w, then abs on the integer codes) exactly as a
    plain loop over float64 |x| bins it."""
    torch.manual_seed(0)
    x = torch.randn(3, 4000) * torch.tensor([[1.0], [0.3], [2.0]])
    o = HistogramObserver(granularity, bins=128)
    o.update(x)
    rows = x.reshape(1, -1) if granularity.kind == "per_tensor" else x
    for g, row in enumerate(rows):
        w = float(o.width[g])
        ref = [0] * 128
        for v in row.tolist():
            ref[min(int(abs(v) / w), 127)] += 1
        assert o.hist[g].tolist() == ref


def test_percentile_clip() -> None:
    o = PercentileObserver(percentile=99.0)
    x = torch.arange(1, 10001, dtype=torch.float32)
    o.update(x)
    lo, hi = o.compute_range(IntFormat(8, signed=False))
    assert hi.item() == pytest.approx(9900, rel=0.002)
    assert lo.item() == 1.0


def test_mse_clips_outliers_and_beats_max() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50000, generator=g)
    x[0] = 40.0
    fmt = IntFormat(4)
    mse, mx = MSEObserver(), make_observer("max")
    for o in (mse, mx):
        o.update(x)
    err = {k: ((fmt.fake_quantize(x, o.compute_params(fmt)) - x) ** 2).mean().item() for k, o in (("mse", mse), ("max", mx))}
    assert err["mse"] < err["max"] / 5


def test_kl_unsigned_uses_256_levels_and_clips_long_tail() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.distributions.Exponential(1.0).sample((200000,))
    o = KLObserver()
    o.update(x)
    _, hi = o.compute_range(IntFormat(8, signed=False))
    assert 3.0 < hi.item() < float(x.max())


@pytest.mark.parametrize("name", ["max", "percentile", "mse", "kl"])
def test_nan_and_empty_are_one_line_errors(name: str) -> None:
    o = make_observer(name, name="conv1.input")
    with pytest.raises(EffdnnError, match="conv1.input has NaN or Inf"):
        o.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(EffdnnError, match="saw no data"):
        make_observer(name).compute_params(IntFormat(8))
    with pytest.raises(EffdnnError, match="unknown 'foo'"):
        make_observer("foo")


def test_observers_of_the_same_tensor_share_its_statistics_not_a_changed_one(monkeypatch) -> None:
    """Two observers of one tensor (a block input read by a conv and its shortcut) count it once and end
    with equal histograms; after an in-place change the tensor is counted again."""
    from effdnn.quant import observers

    calls = []
    real = torch.bincount
    monkeypatch.setattr(observers.torch, "bincount", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = KLObserver(bins=128), KLObserver(bins=128)
    x = torch.rand(4, 3, 8, 8)
    a.update(x)
    b.update(x)
    assert len(calls) == 1 and torch.equal(a.hist, b.hist) and torch.equal(a.max, b.max)
    x.mul_(0.5)  # same object, new version: not the statistics of before
    a.update(x)
    assert len(calls) == 2 and a.hist.sum() == 2 * x.numel()
    y = x.clone()  # equal values, another tensor: counted on its own
    b.update(y)
    assert len(calls) == 3


def test_per_tensor_statistics_read_channels_last_activations_without_a_copy() -> None:
    from effdnn.quant.observers import memory_order_row

    x = torch.randn(2, 5, 4, 3).contiguous(memory_format=torch.channels_last)
    row = memory_order_row(x)
    assert row.data_ptr() == x.data_ptr() and row.shape == (1, x.numel())
    assert torch.equal(row.sort().values, x.reshape(1, -1).sort().values)
    o, p = KLObserver(bins=64), KLObserver(bins=64)
    o.update(x)
    p.update(x.contiguous())
    assert torch.equal(o.hist, p.hist) and torch.equal(o.min, p.min)


def test_calibration_leaves_the_model_in_its_memory_format() -> None:
    from torch import nn

    import effdnn
    from effdnn.models import build_model

    model = build_model("lenet5", 1, 10, (28, 28)).eval()
    data = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    q = effdnn.quantize(model, {"method": "ptq", "act": {"format": "int", "bits": 8, "calibrator": "kl"}}, calib_data=data)
    assert all(m.weight.is_contiguous() for m in q.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert q(data[0]).is_contiguous()

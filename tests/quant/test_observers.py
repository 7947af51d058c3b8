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

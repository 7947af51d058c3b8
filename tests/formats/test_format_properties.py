"""Hypothesis property tests shared by every format (one table of cases drives the invariants)."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effdnn.formats import FixedPointFormat, Granularity, IntFormat, KMeansFormat, LogFormat

floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
vectors = st.lists(floats, min_size=2, max_size=64)

FORMATS = [
    IntFormat(8), IntFormat(4), IntFormat(2), IntFormat(8, signed=False), IntFormat(6, symmetric=False),
    IntFormat(16), IntFormat(3, narrow_range=True), FixedPointFormat(3, 4), FixedPointFormat(0, 7, signed=False),
    LogFormat(4), LogFormat(3, signed=False), LogFormat(4, rounding="linear"), KMeansFormat(2), KMeansFormat(4, init="density"),
]
fmt_st = st.sampled_from(FORMATS)


def _setup(fmt, xs):
    x = torch.tensor(xs, dtype=torch.float32)
    if not getattr(fmt, "signed", True):
        x = x.abs()
    return x, fmt.compute_params(x)


@settings(max_examples=60, deadline=None)
@given(fmt_st, vectors)
def test_idempotent(fmt, xs) -> None:
    x, p = _setup(fmt, xs)
    y = fmt.fake_quantize(x, p)
    assert torch.equal(fmt.fake_quantize(y, p), y)


@settings(max_examples=60, deadline=None)
@given(fmt_st, vectors)
def test_codes_in_range_and_round_trip(fmt, xs) -> None:
    x, p = _setup(fmt, xs)
    codes = fmt.quantize(x, p)
    if isinstance(fmt, (IntFormat, FixedPointFormat)):
        assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax
    elif isinstance(fmt, LogFormat):
        assert codes.abs().max() <= fmt.levels - 1 and (fmt.signed or codes.min() >= 0)
    else:
        assert codes.min() >= 0 and codes.max() < fmt.k
    again = fmt.quantize(fmt.dequantize(codes, p), p)  # decode -> encode round trip
    if isinstance(fmt, KMeansFormat):  # a codebook may hold equal centroids: codes agree up to their value
        assert torch.equal(fmt.dequantize(again, p), fmt.dequantize(codes, p))
    else:
        assert torch.equal(again, codes)


@settings(max_examples=60, deadline=None)
@given(fmt_st, vectors)
def test_monotone(fmt, xs) -> None:
    x, p = _setup(fmt, xs)
    xs_sorted = torch.sort(x)[0]
    y = fmt.fake_quantize(xs_sorted, p)
    assert (y[1:] >= y[:-1]).all()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([f for f in FORMATS if isinstance(f, (IntFormat, FixedPointFormat))]), vectors)
def test_error_within_half_step_inside_range(fmt, xs) -> None:
    x, p = _setup(fmt, xs)
    if isinstance(fmt, IntFormat):
        s, z = float(p.scale), float(p.zero_point)
        lo, hi = (fmt.qmin - z) * s, (fmt.qmax - z) * s
    else:
        s, lo, hi = fmt.step, fmt.qmin * fmt.step, fmt.qmax * fmt.step
    inside = (x >= lo) & (x <= hi)
    err = (fmt.fake_quantize(x, p) - x).abs()[inside]
    assert (err <= s / 2 * (1 + 1e-5) + 1e-6 * x.abs().max()).all()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([LogFormat(4), LogFormat(5, granularity=Granularity("per_tensor"))]), vectors)
def test_log_error_within_half_octave_inside_range(fmt, xs) -> None:
    x, p = _setup(fmt, xs)
    e_max = float(p.e_max)
    lo, hi = 2.0 ** (e_max - fmt.levels + 2), 2.0 ** (e_max + 0.5)
    inside = (x.abs() >= lo) & (x.abs() <= hi)
    y = fmt.fake_quantize(x, p)[inside]
    for a, b in zip(x[inside].tolist(), y.tolist()):
        assert abs(math.log2(abs(b)) - math.log2(abs(a))) <= 0.5 + 1e-6


@settings(max_examples=40, deadline=None)
@given(vectors)
def test_kmeans_centroids_are_fixed_points_and_error_below_range(xs) -> None:
    x = torch.tensor(xs)
    fmt = KMeansFormat(3)
    p = fmt.fit(x)
    c = p.codebook.squeeze(0)
    assert torch.equal(fmt.fake_quantize(c, p), c)
    span = float(x.max() - x.min())
    assert (fmt.fake_quantize(x, p) - x).abs().max() <= span / 2 + 1e-4

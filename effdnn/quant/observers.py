"""Calibrators (observers): stream statistics with ``update(x)``, then solve ``compute_params(fmt)``.

- ``max``: abs-max / min-max (the range of everything seen).
- ``percentile``: the clip at a percentile of |x| (McKinstry et al. 2019; 99.99 by default).
- ``mse``: the clip that minimises the expected squared quantisation error, searched over candidate
  clips on the histogram (Banner et al. 2019 solve the same objective analytically for Laplace data;
  this is the numeric search every toolkit uses).
- ``kl``: TensorRT's entropy calibration (``effdnn.quant.kl``).

Histogram observers keep a 2048-bin histogram of |x| per block over [0, B * width]; when a batch
exceeds the range the bin width grows by an integer factor and old bins merge exactly (no smearing).
The clip T found on |x| becomes the range (max(min, -T), min(max, T)), so unsigned (post-ReLU) data
is clipped on one side only. Every observer works per block (``Granularity``), so per-channel weights
and per-tensor activations share one code path. NaN / Inf in a tensor -> EffdnnError.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from typing import Any

import torch

from ..errors import EffdnnError
from ..formats.granularity import PER_TENSOR, Granularity
from .kl import kl_threshold

NUM_BINS = 2048


def memory_order_row(x: torch.Tensor) -> torch.Tensor:
    """x as one (1, N) row in memory order: a view for any dense layout (channels_last activations too,
    where ``reshape(1, -1)`` would copy); per-tensor statistics do not depend on the order."""
    if x.is_contiguous():
        return x.reshape(1, -1)
    return x.permute(sorted(range(x.dim()), key=lambda d: -x.stride(d))).reshape(1, -1)


_SCRATCH = threading.local()


def _scratch(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused buffer of n elements (one per thread): a fresh multi-MB tensor per batch costs its page
    faults (the histogram pass ran 1.3x slower with them)."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get((dtype, device))
    if buf is None or buf.numel() < n:
        buf = bufs[(dtype, device)] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n]


class BatchStats:
    """The statistics last computed from a tensor, so observers of the same tensor compute them once (a
    residual block's input feeds both its first convolution and its projection shortcut). Entries are
    keyed by the tensor itself (a weak reference: a freed tensor whose memory is reused never matches),
    its version counter (an in-place change is a new tensor) and what was computed."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: list[tuple[weakref.ref, int, Any, Any]] = []

    def get(self, x: torch.Tensor | None, key: Any) -> Any:
        if x is None:
            return None
        for ref, version, k, value in self.entries:
            if ref() is x and version == x._version and k == key:
                return value
        return None

    def put(self, x: torch.Tensor | None, key: Any, value: Any) -> None:
        if x is not None:
            self.entries = [*self.entries[-(self.size - 1):], (weakref.ref(x), x._version, key, value)]


BATCH_STATS = BatchStats()


class Observer:
    """min / max per block; subclasses choose the range from richer statistics."""

    def __init__(self, granularity: Granularity = PER_TENSOR, name: str = "tensor") -> None:
        self.granularity, self.name = granularity, name
        self.min: torch.Tensor | None = None  # (G,)
        self.max: torch.Tensor | None = None
        self.count = 0
        self._src: torch.Tensor | None = None  # the tensor being observed, during update()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        src, x = x, x.detach()
        if x.numel() == 0:
            return
        b = (memory_order_row(x) if self.granularity.kind == "per_tensor" else self.granularity.to_blocks(x)).float()
        key = ("range", self.granularity)
        lo_hi = BATCH_STATS.get(src, key)
        if lo_hi is None:
            # one pass; NaN propagates into both, Inf shows in one: no isfinite pass. A whole-tensor
            # reduction for G = 1: aminmax along dim 1 of a (1, N) view runs ~40x slower on the CPU
            lo_hi = tuple(t.reshape(1) for t in torch.aminmax(b)) if b.shape[0] == 1 else torch.aminmax(b, dim=1)
            if b.shape[0] == 1:  # two Python floats: cheaper than four tensor ops
                finite = math.isfinite(lo_hi[0].item()) and math.isfinite(lo_hi[1].item())
            else:
                finite = bool(torch.isfinite(lo_hi[0]).all() and torch.isfinite(lo_hi[1]).all())
            if not finite:
                raise EffdnnError(f"calibration: {self.name} has NaN or Inf values")
            BATCH_STATS.put(src, key, lo_hi)
        lo, hi = lo_hi
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)
        self.count += 1
        self._src = src
        self._update(b, lo, hi)
        self._src = None

    def _update(self, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        pass

    @property
    def nonnegative(self) -> bool:
        return self.min is not None and bool((self.min >= 0).all())

    def compute_range(self, fmt: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min, self.max  # type: ignore[return-value]

    def compute_params(self, fmt: Any) -> Any:
        if self.count == 0 or self.min is None:
            raise EffdnnError(f"calibration: {self.name} saw no data (empty calibration set?)")
        if not hasattr(fmt, "params_from_range"):
            raise EffdnnError(f"calibration: format {fmt.name!r} is not calibrated from a range")
        lo, hi = self.compute_range(fmt)
        return fmt.params_from_range(lo, hi)


class MaxObserver(Observer):
    """abs-max (symmetric formats) / min-max (affine formats) of all data seen."""


class HistogramObserver(Observer):
    def __init__(self, granularity: Granularity = PER_TENSOR, name: str = "tensor", bins: int = NUM_BINS) -> None:
        super().__init__(granularity, name)
        self.bins = bins
        self.hist: torch.Tensor | None = None  # (G, B) counts of |x|
        self.width: torch.Tensor | None = None  # (G,) bin width

    def _update(self, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        amax = torch.maximum(lo.abs(), hi)
        G, B = b.shape[0], self.bins
        if self.hist is None:
            self.hist = torch.zeros(G, B, dtype=torch.float64, device=b.device)
            self.width = (amax / B).clamp_min(1e-12)
        else:  # grow the range by an integer factor: old bin k goes to k // factor, exactly
            factor = torch.ceil(amax / (B * self.width)).clamp_min(1).long()  # type: ignore[operator]
            if (factor > 1).any():
                idx = torch.arange(B, device=b.device).unsqueeze(0) // factor.unsqueeze(1)  # (G, B)
                self.hist = torch.zeros_like(self.hist).scatter_add_(1, idx, self.hist)
                self.width = self.width * factor
        key = ("hist", self.granularity, B, tuple(self.width.tolist()))  # type: ignore[union-attr]
        counts = BATCH_STATS.get(self._src, key)
        if counts is None:
            counts = self._counts(b, signed=not bool((lo >= 0).all()))
            BATCH_STATS.put(self._src, key, counts)
        self.hist += counts

    def _counts(self, a: torch.Tensor, signed: bool = True) -> torch.Tensor:
        """(G, B) counts of |x| (G, N): bin k holds [k w, (k+1) w), the top edge goes to the last bin.
        ``signed=False`` promises x >= 0 (post-ReLU data)."""
        G, B = a.shape[0], self.bins
        if G == 1:  # torch.histc does the same ~2.7x slower than one index pass + bincount of 16-bit indices
            dt = torch.int16 if B < 2**15 else torch.int32
            n = a.shape[1]
            scaled, idx = _scratch(n, torch.float32, a.device), _scratch(n, dt, a.device)
            torch.mul(a[0], 1.0 / float(self.width[0]), out=scaled)  # type: ignore[index]
            idx.copy_(scaled)  # truncation toward 0: floor of |x| / w up to the sign; every |index| <= B
            if signed:
                idx.abs_()  # trunc(|x| / w) = |trunc(x / w)|: the abs on 16-bit integers, no float copy
            counts = torch.bincount(idx, minlength=B + 1).double()
            counts[B - 1] += counts[B:].sum()  # the top edge (|x| = B w) into the last bin, no clamp pass
            return counts[:B].unsqueeze(0)
        idx = torch.clamp((a / self.width.unsqueeze(1)).long().abs(), max=B - 1)  # type: ignore[union-attr]
        idx = idx + torch.arange(G, device=a.device).unsqueeze(1) * B
        return torch.bincount(idx.flatten(), minlength=G * B).reshape(G, B).double()

    def clip(self, fmt: Any) -> torch.Tensor:
        """T (G,): the clip of |x|."""
        raise NotImplementedError

    def compute_range(self, fmt: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.clip(fmt).float()
        return torch.maximum(self.min, -t), torch.minimum(self.max, t)  # type: ignore[arg-type]


class PercentileObserver(HistogramObserver):
    def __init__(self, granularity: Granularity = PER_TENSOR, name: str = "tensor", bins: int = NUM_BINS,
                 percentile: float = 99.99) -> None:
        super().__init__(granularity, name, bins)
        if not 0 < percentile <= 100:
            raise EffdnnError(f"percentile calibrator: percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def clip(self, fmt: Any) -> torch.Tensor:
        cdf = self.hist.cumsum(1)  # type: ignore[union-attr]
        target = cdf[:, -1:] * (self.percentile / 100)
        k = torch.searchsorted(cdf, target).squeeze(1).clamp_max(self.bins - 1)  # first bin reaching it
        return (k + 1).double() * self.width  # upper edge of that bin


class MSEObserver(HistogramObserver):
    """Clip T minimising sum_b hist[b] (c_b - Q_T(c_b))^2 over bin centres c_b, for ``candidates``
    clips evenly spaced in (0, max|x|]; all candidates and blocks are quantised in one call."""

    EXACT_MAX = 16384  # a single small tensor (a weight) is searched on its values, not on bin centres

    def __init__(self, granularity: Granularity = PER_TENSOR, name: str = "tensor", bins: int = NUM_BINS,
                 candidates: int = 128) -> None:
        super().__init__(granularity, name, bins)
        self.candidates = candidates
        self.samples: torch.Tensor | None = None

    def _update(self, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super()._update(b, lo, hi)
        self.samples = b.clone() if self.count == 1 and b.shape[1] <= self.EXACT_MAX else None

    def clip(self, fmt: Any) -> torch.Tensor:
        hist, width = self.hist, self.width  # (G, B), (G,)
        G, C = hist.shape[0], self.candidates  # type: ignore[union-attr]
        exact = self.samples is not None
        if exact:  # (G, N) signed values, each counted once
            centres, hist = self.samples.double(), torch.ones_like(self.samples, dtype=torch.float64)  # type: ignore[union-attr]
        else:  # (G, B) bin centres weighted by their counts
            centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5).unsqueeze(0) * width.unsqueeze(1)
        B = centres.shape[1]
        amax = torch.maximum(self.min.abs(), self.max.abs()).double()  # (G,)
        t = amax.unsqueeze(1) * torch.arange(1, C + 1, dtype=torch.float64) / C  # (G, C)
        sign = 1.0 if self.nonnegative else -1.0
        lo = torch.maximum(self.min.double().unsqueeze(1), sign * t) if sign < 0 else torch.zeros_like(t)
        hi = torch.minimum(self.max.double().unsqueeze(1), t)
        rows = dataclasses.replace(fmt, granularity=Granularity("per_channel", 0)) if hasattr(fmt, "granularity") else fmt
        params = rows.params_from_range(lo.flatten().float(), hi.flatten().float())  # G*C blocks
        xs = centres.unsqueeze(1).expand(G, C, B).reshape(G * C, B).float()
        err = (rows.fake_quantize(xs, params).double() - xs.double()) ** 2  # (G*C, B)
        if not self.nonnegative and not exact:  # the negative half of a symmetric histogram of |x|
            err = (err + (rows.fake_quantize(-xs, params).double() + xs.double()) ** 2) / 2
        total = (err.reshape(G, C, B) * hist.unsqueeze(1)).sum(2)  # (G, C)
        return t.gather(1, total.argmin(1, keepdim=True)).squeeze(1)


class KLObserver(HistogramObserver):
    """TensorRT entropy calibration on the 2048-bin histogram of |x| (``effdnn.quant.kl``).

    ``zero_bin="as_next"`` (default) first sets bin 0 to bin 1's count, as NVIDIA's own implementation
    does (pytorch-quantization, ``calib/histogram.py``, ``_compute_amax_entropy``: ``bins[0] = bins[1]``):
    the spike of exact zeros after a ReLU is represented exactly by code 0, and left in, it is spread
    over the first level's bins and pushes the search towards needlessly small thresholds.
    ``zero_bin="keep"`` searches the raw histogram."""

    def __init__(self, granularity: Granularity = PER_TENSOR, name: str = "tensor", bins: int = NUM_BINS,
                 zero_bin: str = "as_next") -> None:
        super().__init__(granularity, name, bins)
        if zero_bin not in ("as_next", "keep"):
            raise EffdnnError(f"kl calibrator: zero_bin must be as_next or keep, got {zero_bin!r}")
        self.zero_bin = zero_bin

    def clip(self, fmt: Any) -> torch.Tensor:
        levels_of = getattr(fmt, "magnitude_levels", None)
        if levels_of is None:
            raise EffdnnError(f"kl calibrator: needs a uniform integer format, not {fmt.name!r}")
        levels = levels_of(self.nonnegative)
        hist = self.hist.clone()  # type: ignore[union-attr]
        if self.zero_bin == "as_next":
            hist[:, 0] = hist[:, 1]
        ts = [kl_threshold(h, float(w), levels) for h, w in zip(hist, self.width)]  # one search per block
        return torch.tensor(ts, dtype=torch.float64)


CALIBRATORS: dict[str, type[Observer]] = {
    "max": MaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}


def make_observer(calibrator: str, granularity: Granularity = PER_TENSOR, name: str = "tensor", **kwargs: Any) -> Observer:
    if calibrator not in CALIBRATORS:
        raise EffdnnError(f"calibrator: unknown {calibrator!r} (known: {', '.join(CALIBRATORS)})")
    return CALIBRATORS[calibrator](granularity, name, **kwargs)


__all__ = ["CALIBRATORS", "HistogramObserver", "KLObserver", "MSEObserver", "MaxObserver", "NUM_BINS", "Observer",
           "PercentileObserver", "make_observer"]

"""Training-time fake-quantizers of the QAT methods, all subclasses of ``Quantizer``.

Every QAT quantizer trains with a straight-through estimator (Bengio et al. 2013): the rounding
passes the gradient unchanged, the clip gates it (0 outside the representable range). After training
``to_static()`` returns a plain ``Quantizer`` (format + frozen params as buffers) that computes the
same values, so a QAT model is deployed, costed and exported exactly like a PTQ model.

- ``DynamicWeightQuantizer``: params re-fitted to the current weight at every step (int max-scaling,
  log2 e_max, fixed point): the plain STE QAT of any weight format.
- ``EMAActQuantizer``: activation range from an exponential moving average of batch min / max
  (Jacob et al. 2018, section 3.1), all-reduced over DDP ranks so every rank holds the same range.
- ``CodebookWeightQuantizer``: Deep Compression (Han et al. 2016, section 3.3) k-means fine-tuning:
  cluster indices fixed, each centroid trained with the sum of the gradients of its cluster.

Activation quantizers start in ``observe`` mode: the generic ``calibrate`` driver runs a few batches,
then ``finish_calibration`` initialises their learned or tracked params from those statistics.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..utils.distributed import all_reduce_
from ..formats import IntFormat, KMeansFormat, NumberFormat
from ..formats.kmeans import KMeansParams
from .fake_quant import Quantizer
from .fused_fq import fake_quantize_dynamic, fake_quantize_int


class QATQuantizer(Quantizer):
    """Base: ``to_static()`` -> a plain Quantizer with the same forward values (eval mode)."""

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        raise NotImplementedError


# -- weights ---------------------------------------------------------------------------------------
class DynamicWeightQuantizer(QATQuantizer):
    """fmt.fake_quantize(w, fmt.compute_params(w)) with params re-fitted every step (STE backward)."""

    def __init__(self, fmt: NumberFormat) -> None:
        super().__init__(fmt, None, role="weight")
        self.mode = "quantize"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if isinstance(self.fmt, IntFormat) and (out := fake_quantize_dynamic(self.fmt, w)) is not None:
            return out  # the same values and gradient in one fused node
        return self.fmt.fake_quantize(w, self.fmt.compute_params(w.detach()))

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role="weight")
        q.set_params(self.fmt.compute_params(x.detach()))  # type: ignore[union-attr]
        return q


class CodebookWeightQuantizer(QATQuantizer):
    """k-means weight sharing with trained centroids (Deep Compression, section 3.3):

        w_hat[i] = C[idx[i]]          dL/dC_k = sum_{i: idx[i] = k} dL/dw_hat[i]

    ``idx`` is fixed at the initial clustering; the gather's backward is exactly that grouped sum. The
    layer's own weight is no longer used, so it stops requiring a gradient (DDP needs every trained
    parameter to get one); ``convert_qat`` writes the trained codebook back into it."""

    def __init__(self, fmt: KMeansFormat, weight: torch.Tensor) -> None:
        super().__init__(fmt, None, role="weight")
        self.mode = "quantize"
        weight.requires_grad_(False)
        params = fmt.fit(weight.detach())
        self.codebook = nn.Parameter(params.codebook.clone())  # (G, k)
        self.register_buffer("index", fmt.quantize(weight.detach(), params).to(torch.int64))
        self._param_type, self._param_fields = KMeansParams, ["codebook"]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = self.fmt.granularity
        idx = g.to_blocks(self.index)  # (G, N)
        return g.from_blocks(torch.gather(self.codebook, 1, idx), w.shape).to(w.dtype)

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role="weight")
        q.set_params(KMeansParams(torch.sort(self.codebook.detach(), dim=1)[0]))
        return q


# -- activations -----------------------------------------------------------------------------------
class ActStatsMixin:
    """``observe`` mode: gather min, max, mean |x| over the calibration batches."""

    def _init_stats(self) -> None:
        self.register_buffer("obs_min", torch.tensor(float("inf")))  # type: ignore[attr-defined]
        self.register_buffer("obs_max", torch.tensor(float("-inf")))  # type: ignore[attr-defined]
        self.abs_sum, self.count, self.mode = 0.0, 0, "observe"  # type: ignore[attr-defined]

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        self.obs_min.copy_(torch.minimum(self.obs_min, x.min()))  # type: ignore[attr-defined]
        self.obs_max.copy_(torch.maximum(self.obs_max, x.max()))  # type: ignore[attr-defined]
        self.abs_sum += float(x.abs().sum())
        self.count += x.numel()

    @property
    def nonnegative(self) -> bool:
        return bool(self.obs_min >= 0)  # type: ignore[attr-defined]

    @property
    def mean_abs(self) -> float:
        return self.abs_sum / max(self.count, 1)


class EMAActQuantizer(ActStatsMixin, QATQuantizer):
    """Uniform integer activations with a moving-average min / max range (Jacob et al. 2018, sec. 3.1):
    lo <- (1 - m) lo + m min(x) during training; the clamp in ``IntFormat.fake_quantize`` gates the
    gradient outside [lo, hi]. Batch min / max are all-reduced so every DDP rank keeps the same range."""

    def __init__(self, fmt: IntFormat, momentum: float = 0.01, auto_sign: bool = True) -> None:
        super().__init__(fmt, None, role="act")
        self.momentum, self.auto_sign = momentum, auto_sign
        self._init_stats()
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))

    def finish_calibration(self) -> None:
        if self.auto_sign and self.nonnegative:
            self.fmt = dataclasses.replace(self.fmt, signed=False, narrow_range=False)
        self.lo.copy_(self.obs_min.clamp_max(0))
        self.hi.copy_(self.obs_max.clamp_min(0))
        self.mode = "quantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self._observe(x)
            return x
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                mn, mx = torch.aminmax(x.detach())  # one pass for both
                lo, hi = all_reduce_(mn.reshape(1), "min"), all_reduce_(mx.reshape(1), "max")
                self.lo.lerp_(lo[0].clamp_max(0), self.momentum)
                self.hi.lerp_(hi[0].clamp_min(0), self.momentum)
        params = self.fmt.params_from_range(self.lo.reshape(1), self.hi.reshape(1))
        out = fake_quantize_int(self.fmt, x, params)  # type: ignore[arg-type]
        return out if out is not None else self.fmt.fake_quantize(x, params)

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role="act")
        q.set_params(self.fmt.params_from_range(self.lo.reshape(1), self.hi.reshape(1)))
        return q


__all__ = ["ActStatsMixin", "CodebookWeightQuantizer", "DynamicWeightQuantizer", "EMAActQuantizer", "QATQuantizer"]

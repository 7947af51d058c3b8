"""Uniform integer quantization, 2-16 bits (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", eq. 1: r = S (q - Z)).

    q = clamp(round(x / S) + Z, qmin, qmax)        x_hat = S (q - Z)

``round`` is round-half-to-even (as ONNX QuantizeLinear and torch's fake-quantize ops). Symmetric
formats fix Z = 0 and take S = amax / qmax (signed: codes -qmax..qmax (-128 unused unless needed by
the full range), unsigned for post-ReLU tensors: 0..2^b-1); affine formats fit S and Z to [lo, hi]
(widened to contain 0, so zero is exactly representable). ``narrow_range`` drops the most negative
signed code (-127..127, the TensorRT convention). Granularity (per tensor / channel / group) comes
from one ``Granularity`` argument; params hold one scale and zero point per block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import EffdnnError
from .base import FormatOptions, NumberFormat
from .granularity import PER_TENSOR, Granularity
from .ste import round_ste

MIN_SCALE = 1e-12


@dataclass
class IntParams:
    scale: torch.Tensor  # (G,) float32
    zero_point: torch.Tensor  # (G,) float32 holding integers


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(b / s) + z, qmin, qmax) - z) * s`` for fixed ``s``, ``z``, with the clipped
    straight-through gradient (1 where the code is inside [qmin, qmax], else 0) in one autograd node
    that saves one boolean mask (the same gradient the composed ops give, without their intermediates)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:
        v = torch.round(b / s) + z
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((v >= qmin) & (v <= qmax))
        return (v.clamp(qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (inside,) = ctx.saved_tensors
        return gy * inside, None, None, None, None


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    bits: int = 8  # type: ignore[assignment]
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = field(default=PER_TENSOR)
    name = "int"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise EffdnnError(f"int format: bits must be an integer in 2..16, got {self.bits!r}")
        if self.narrow_range and not self.signed:
            raise EffdnnError("int format: narrow_range applies to signed formats only")
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", Granularity.of(self.granularity))

    # -- code range --------------------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def magnitude_levels(self, nonnegative: bool) -> int:
        """Codes available to |x| on one side of zero: 128 for int8 (TensorRT's 128 KL levels), 256 for
        uint8, ``qmax - qmin + 1`` for an affine format on non-negative data."""
        if not self.symmetric and nonnegative:
            return self.qmax - self.qmin + 1
        if not self.symmetric:
            return (self.qmax - self.qmin + 1) // 2
        return self.qmax + 1

    # -- params ------------------------------------------------------------------------------------
    def params_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> IntParams:
        """Scale / zero point (one per block) covering [lo, hi] (each of shape (G,))."""
        lo, hi = lo.float(), hi.float()
        if self.symmetric:
            amax = torch.maximum(lo.abs(), hi.abs()) if self.signed else hi.clamp_min(0)
            scale = amax / self.qmax
            zp = torch.zeros_like(scale)
        else:
            lo, hi = lo.clamp_max(0), hi.clamp_min(0)
            scale = (hi - lo) / (self.qmax - self.qmin)
            scale = scale.clamp_min(MIN_SCALE)
            zp = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax)
        return IntParams(scale.clamp_min(MIN_SCALE), zp)

    def compute_params(self, x: torch.Tensor) -> IntParams:
        """The max calibrator on ``x`` itself: abs-max (symmetric) or min / max (affine) per block."""
        b = self.granularity.to_blocks(x.detach())  # (G, N)
        return self.params_from_range(b.amin(1), b.amax(1))

    # -- quantize ----------------------------------------------------------------------------------
    def _params(self, x: torch.Tensor, params: IntParams | None) -> tuple[torch.Tensor, torch.Tensor]:
        p = params if params is not None else self.compute_params(x)
        return p.scale.reshape(-1, 1), p.zero_point.reshape(-1, 1)  # (G, 1)

    def quantize(self, x: torch.Tensor, params: IntParams | None = None) -> torch.Tensor:
        s, z = self._params(x, params)
        b = self.granularity.to_blocks(x)  # (G, N)
        q = torch.clamp(torch.round(b / s) + z, self.qmin, self.qmax)
        return self.granularity.from_blocks(q.to(torch.int32), x.shape)

    def dequantize(self, codes: torch.Tensor, params: IntParams | None = None) -> torch.Tensor:
        if params is None:
            raise EffdnnError("int format: dequantize needs the params the codes were made with")
        s, z = params.scale.reshape(-1, 1), params.zero_point.reshape(-1, 1)
        b = self.granularity.to_blocks(codes).float()
        return self.granularity.from_blocks((b - z) * s, codes.shape)

    def fake_quantize(self, x: torch.Tensor, params: IntParams | None = None) -> torch.Tensor:
        """S (clamp(round(x/S) + Z) - Z) with a straight-through round: the gradient is 1 inside the
        range and 0 where clamped; the scale gets the LSQ gradient (Esser et al. 2020, eq. 3) when it
        is a learnable tensor."""
        s, z = self._params(x, params)
        b = self.granularity.to_blocks(x)  # (G, N)
        if s.requires_grad or z.requires_grad:  # learnable scale: autograd carries its gradient
            q = torch.clamp(round_ste(b / s) + z, self.qmin, self.qmax)
            return self.granularity.from_blocks((q - z) * s, x.shape)
        return self.granularity.from_blocks(_FakeQuant.apply(b, s, z, float(self.qmin), float(self.qmax)), x.shape)

    def storage_bits(self, numel: int, params: IntParams | None = None) -> int:
        """Codes + one fp32 scale per block (+ a ``bits``-wide zero point per block if affine)."""
        g = 1 if params is None else int(params.scale.numel())
        return int(numel * self.bits + g * (32 + (0 if self.symmetric else self.bits)))

    @property
    def label(self) -> str:
        kind = ("int" if self.signed else "uint") + str(self.bits)
        return f"{kind} {self.granularity}" + ("" if self.symmetric else " affine")


class IntOptions(FormatOptions):
    """``format: int``: ``symmetric`` (zero point 0) or affine, ``narrow_range`` (drop -2^(b-1))."""

    symmetric: bool = True
    narrow_range: bool = False

    def build(self, bits: int, signed: bool, granularity: Granularity) -> IntFormat:
        return IntFormat(bits=bits, signed=signed, symmetric=self.symmetric, narrow_range=self.narrow_range,
                         granularity=granularity)

"""Fused fake quantization for QAT: each quantizer's forward and backward as one autograd node running
one compiled pass each (``kernels/fake_quant_kernels.cpp``), instead of the five to ten elementwise
autograd ops (and temporaries) of the reference expressions.

The definitions are the references', evaluated op by op in float32, so forward values are
bit-identical and gradients equal to rounding of the reductions (``tests/quant/test_fused_fq.py``):

- ``fake_quantize_int``: integer fake quantization with the clipped straight-through gradient (Jacob et
  al. 2018 eq. 1; ``IntFormat.fake_quantize`` / ``_FakeQuant``), per tensor or per block of axis 0.
- ``lsq_quantize``: LSQ (Esser et al. 2020 eq. 1-5; ``methods/lsq.py``), with the step's gradient scale
  g = 1 / sqrt(N Q_P) and the |s| >= 1e-8 clamp folded into the node.
- ``pact_quantize_fused``: PACT (Choi et al. 2018 eq. 1-3; ``methods/pact.py``).

Why not torch's fused ops: ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` multiply
by the float32 reciprocal of the scale (``x * (1 / s)``), which rounds some values to the neighbouring
code compared with the reference's ``x / s`` (and with ONNX QuantizeLinear's definition); torch's
learnable LSQ ops (``_fake_quantize_learnable_per_*_affine``) gate the gradients by the *rounded* code,
so within half a step beyond the clip they pass dL/dx and give the step round(v) - v instead of the
paper's 0 and Q_P (eq. 3, 5). The kernels here follow the references exactly.

Every entry point returns None when it does not apply (no compiled kernels, a non-float32 or non-CPU
tensor, a block layout other than contiguous blocks of axis 0); callers then run the reference.
"""
from __future__ import annotations

import torch

from ..formats import IntFormat
from ..formats.integer import IntParams
from .kernels import fq_lib

_PARALLEL_MIN = 1 << 15  # below this many elements one thread does the pass


def _threads(n: int) -> int:
    return torch.get_num_threads() if n >= _PARALLEL_MIN else 1


def _usable(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu" and fq_lib() is not None


def _rows(fmt: IntFormat, x: torch.Tensor) -> int | None:
    """G when ``fmt``'s blocks of ``x`` are G contiguous rows of its memory (per tensor, or axis 0)."""
    g = fmt.granularity
    if g.kind == "per_tensor":
        return 1
    if x.dim() == 0 or g.axis % x.dim() != 0:
        return None
    return g.num_blocks(x.shape)


class _FusedFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        out = torch.empty_like(x)
        mask = torch.empty(x.shape, dtype=torch.uint8) if ctx.needs_input_grad[0] else None
        g = s.numel()
        fq_lib().effdnn_fq_affine(x.data_ptr(), g, x.numel() // g, s.data_ptr(), z.data_ptr(), qmin, qmax,
                                  out.data_ptr(), None if mask is None else mask.data_ptr(), _threads(x.numel()))
        if mask is not None:
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        gy = gy.contiguous()
        gx = torch.empty_like(gy)
        fq_lib().effdnn_fq_mask_grad(gy.data_ptr(), mask.data_ptr(), gy.numel(), 0, gx.data_ptr(), _threads(gy.numel()))
        return gx, None, None, None, None


def fake_quantize_int(fmt: IntFormat, x: torch.Tensor, params: IntParams) -> torch.Tensor | None:
    """``fmt.fake_quantize(x, params)`` for fixed params (no gradient to the scale), fused; None when
    the fused kernel does not apply."""
    if not _usable(x) or params.scale.requires_grad or params.zero_point.requires_grad:
        return None
    g = _rows(fmt, x)
    if g is None or params.scale.numel() != g:
        return None
    s = params.scale.detach().to(torch.float32).contiguous()
    z = params.zero_point.detach().to(torch.float32).contiguous()
    return _FusedFakeQuant.apply(x, s, z, float(fmt.qmin), float(fmt.qmax))


def fake_quantize_dynamic(fmt: IntFormat, w: torch.Tensor) -> torch.Tensor | None:
    """``fmt.fake_quantize(w, fmt.compute_params(w))`` (params re-fitted to ``w``: the max calibrator of
    ``IntFormat.compute_params``, min and max in one pass), fused; None when it does not apply."""
    if not _usable(w) or _rows(fmt, w) is None:
        return None
    lo, hi = torch.aminmax(fmt.granularity.to_blocks(w.detach()), dim=1)
    return fake_quantize_int(fmt, w, fmt.params_from_range(lo, hi))


class _FusedLSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, gfac: float, qmin: float, qmax: float) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        st = step.detach().contiguous()
        out, s = torch.empty_like(x), torch.empty_like(st)
        g = st.numel()
        fq_lib().effdnn_lsq_fwd(x.data_ptr(), g, x.numel() // g, st.data_ptr(), gfac, qmin, qmax, out.data_ptr(),
                                s.data_ptr(), _threads(x.numel()))
        ctx.save_for_backward(x, st)
        ctx.args = (gfac, qmin, qmax)
        return out

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None, None, None]:  # type: ignore[override]
        x, st = ctx.saved_tensors
        gfac, qmin, qmax = ctx.args
        gy = gy.contiguous()
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dstep = torch.empty_like(st)
        g = st.numel()
        fq_lib().effdnn_lsq_bwd(x.data_ptr(), gy.data_ptr(), g, x.numel() // g, st.data_ptr(), gfac, qmin, qmax,
                                None if gx is None else gx.data_ptr(), dstep.data_ptr(), _threads(x.numel()))
        return gx, dstep, None, None, None


def lsq_quantize(fmt: IntFormat, x: torch.Tensor, step: torch.Tensor, gfac: float) -> torch.Tensor | None:
    """LSQ's forward / backward of ``LSQQuantizer`` (step s = |gradscale(step, gfac)| >= 1e-8 per block,
    then ``round(clip(x / s, Q_min, Q_max)) * s`` with eq. 3-5's gradients), fused; None when it does not
    apply."""
    if not _usable(x) or step.dtype != torch.float32:
        return None
    g = _rows(fmt, x)
    if g is None or step.numel() != g:
        return None
    return _FusedLSQ.apply(x, step, gfac, float(fmt.qmin), float(fmt.qmax))


class _FusedPACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, signed: bool, levels: int) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        out = torch.empty_like(x)
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        code = torch.empty(x.shape, dtype=torch.uint8) if grad else None
        fq_lib().effdnn_pact_fwd(x.data_ptr(), x.numel(), float(alpha), int(signed), levels, out.data_ptr(),
                                 None if code is None else code.data_ptr(), _threads(x.numel()))
        if code is not None:
            ctx.save_for_backward(code)
        ctx.signed, ctx.alpha_shape = signed, alpha.shape
        return out

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None, None]:  # type: ignore[override]
        (code,) = ctx.saved_tensors
        gy = gy.contiguous()
        gx = torch.empty_like(gy) if ctx.needs_input_grad[0] else None
        da = torch.empty(1, dtype=torch.float32)
        fq_lib().effdnn_pact_bwd(gy.data_ptr(), code.data_ptr(), gy.numel(), int(ctx.signed),
                                 None if gx is None else gx.data_ptr(), da.data_ptr(), _threads(gy.numel()))
        return gx, da.reshape(ctx.alpha_shape), None, None


def pact_quantize_fused(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor | None:
    """PACT eq. 1-3 (``PACTQuantize``) fused; None when it does not apply (one clip per tensor)."""
    if not _usable(x) or alpha.numel() != 1 or alpha.dtype != torch.float32:
        return None
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return _FusedPACT.apply(x, alpha, signed, levels)


__all__ = ["fake_quantize_dynamic", "fake_quantize_int", "lsq_quantize", "pact_quantize_fused"]

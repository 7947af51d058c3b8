"""Real fp8 GEMMs for 8-bit floating-point training: every Linear / Conv2d GEMM on fp8 tensor cores.

The three GEMMs of a layer (forward y = x W^T, error dx = dy W, weight gradient dW = dy^T x) run as
``torch._scaled_mm`` products of fp8 operands with float32 accumulation and output. Operands are scaled
per tensor to the format's range (amax scaling, as in Micikevicius et al. 2022, "FP8 formats for deep
learning") before the cast, and the product is unscaled by the inverse scales. Operand formats follow
HFP8 (Sun et al. 2019): weights and activations e4m3 (torch.float8_e4m3fn), errors e5m2; this is also
the only split fp8 tensor cores multiply (e5m2 x e5m2 is not supported), so the native path runs the
``fp8`` variant with e4m3 forward operands too. Products accumulate in the tensor cores' float32, not in
the paper's chunked FP16 (the emulation in lowp/gemm.py models that).

Convolutions are lowered to a GEMM by im2col (``F.unfold``); its backward (col2im) is autograd's. CUDA's
fp8 GEMM wants every dimension a multiple of 16: operands are zero-padded, which leaves the product
exact. torch's CPU build also has ``_scaled_mm``, so the path is tested without a GPU.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.precision import LayerPrecision
from ..formats.float_bits import compile_enabled, compile_kernel, disable_compile

FWD_DTYPE, ERR_DTYPE = torch.float8_e4m3fn, torch.float8_e5m2


def fp8_available(device: torch.device) -> bool:
    """True where torch._scaled_mm runs fp8 operands: a CUDA GPU of compute capability >= 8.9."""
    return (device.type == "cuda" and torch.cuda.is_available() and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= (8, 9))


def _scale_cast(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    fmax = torch.finfo(dtype).max
    scale = fmax / x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * scale).clamp(-fmax, fmax).to(dtype), scale.reciprocal()


@lru_cache(maxsize=None)
def _compiled_scale_cast(dtype: torch.dtype) -> Callable[..., Any]:
    return compile_kernel(lambda x: _scale_cast(x, dtype))  # one amax pass, one fused scale-clamp-cast pass


def to_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x scaled so its amax is the fp8 format's largest finite value, cast (round to nearest, saturating);
    returns (codes, inverse scale): x ~= codes.float() * inverse scale. Fused by torch.compile on a GPU."""
    x = x.detach()
    if x.is_cuda and compile_enabled(x.numel()):
        try:
            return _compiled_scale_cast(dtype)(x)
        except Exception as err:  # no Triton: stay correct, only slower
            disable_compile(err)
    return _scale_cast(x, dtype)


def _pad16(q: torch.Tensor) -> torch.Tensor:
    """Zero-pad both dimensions of fp8 codes to multiples of 16 (byte view: pad has no fp8 kernel)."""
    r, c = (-q.shape[0]) % 16, (-q.shape[1]) % 16
    return F.pad(q.view(torch.uint8), (0, c, 0, r)).view(q.dtype) if r or c else q


def scaled_mm(qa: torch.Tensor, sa: torch.Tensor, qb_t: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """(qa sa) (M, K) @ ((qb_t sb) (N, K))^T of fp8 codes, float32 (M, N). On CUDA every dimension is
    padded to a multiple of 16 (cuBLASLt's fp8 rule); zero padding leaves the product exact."""
    m, n = qa.shape[0], qb_t.shape[0]
    qa, qb_t = qa.contiguous(), qb_t.contiguous()
    if qa.is_cuda:
        qa, qb_t = _pad16(qa), _pad16(qb_t)
    y = torch._scaled_mm(qa, qb_t.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)  # b column-major
    return y[:m, :n]


def fp8_mm(a: torch.Tensor, b_t: torch.Tensor, da: torch.dtype, db: torch.dtype) -> torch.Tensor:
    """a (M, K) @ b_t (N, K)^T with fp8 operands of formats da, db; float32 (M, N) result."""
    return scaled_mm(*to_fp8(a, da), *to_fp8(b_t, db))


class Fp8MatmulFn(torch.autograd.Function):
    """y = x w^T (x (M, K), w (N, K)) with all three GEMMs in fp8: e4m3 x / w, e5m2 errors. Each operand
    is cast once: the forward's fp8 x and w are what the backward GEMMs use (and all it keeps)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        (qx, sx), (qw, sw) = to_fp8(x, FWD_DTYPE), to_fp8(w, FWD_DTYPE)
        ctx.save_for_backward(qx, sx, qw, sw)
        ctx.dtypes = (x.dtype, w.dtype)
        return scaled_mm(qx, sx, qw, sw)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qx, sx, qw, sw = ctx.saved_tensors
        qg, sg = to_fp8(gy, ERR_DTYPE)
        gx = scaled_mm(qg, sg, qw.t(), sw)  # (M, N) @ (N, K)
        gw = scaled_mm(qg.t(), sg, qx.t(), sx)  # (N, M) @ (M, K)
        return gx.to(ctx.dtypes[0]), gw.to(ctx.dtypes[1])


class _Fp8Mixin:
    def effdnn_precision(self) -> LayerPrecision:
        return LayerPrecision(weight_bits=8, act_bits=8, acc_bits=32, label="fp8 e4m3/e5m2 (torch._scaled_mm)")

    def effdnn_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        """K MACs per output element (the cost model does not trace _scaled_mm)."""
        w = self.weight  # type: ignore[attr-defined]
        return out.numel() * (w.numel() // w.shape[0])


class Fp8Linear(_Fp8Mixin, nn.Linear):
    """nn.Linear whose forward and backward GEMMs run in fp8 (bias added in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = Fp8MatmulFn.apply(x.reshape(-1, x.shape[-1]), self.weight)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Fp8Conv2d(_Fp8Mixin, nn.Conv2d):
    """nn.Conv2d (groups 1, zero padding) as an im2col GEMM in fp8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, Ho, Wo)
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C kh kw, L)
        cols = cols.transpose(1, 2).reshape(b * ho * wo, -1)
        y = Fp8MatmulFn.apply(cols, self.weight.reshape(self.out_channels, -1))  # (B L, N)
        y = y.reshape(b, ho * wo, self.out_channels).transpose(1, 2).reshape(b, self.out_channels, ho, wo)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def convert_native_fp8(model: nn.Module, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Make every plain Linear and groups-1, zero-padded Conv2d not named in ``skip`` an fp8 layer (in
    place); returns the converted names."""
    done = []
    for name, mod in model.named_modules():
        if name in skip:
            continue
        if type(mod) is nn.Linear:
            mod.__class__ = Fp8Linear
        elif (type(mod) is nn.Conv2d and mod.groups == 1 and mod.padding_mode == "zeros"
              and not isinstance(mod.padding, str)):
            mod.__class__ = Fp8Conv2d
        else:
            continue
        done.append(name)
    return done

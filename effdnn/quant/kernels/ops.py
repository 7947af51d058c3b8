"""Python entry points of the compiled binary kernels (``lib()`` must not be None).

Words are 64-bit, bit i of a row = element i (little-endian), bit 1 = +1, zero beyond K; they travel as
torch int64 tensors (the same bits as numpy uint64). XNOR-Net (Rastegari et al. 2016) eq. for +-1
vectors: a . b = K - 2 popcount(a xor b).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..bitpack import pack_words
from . import lib

NB = 8  # output channels per weight panel (binary_kernels.cpp)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def pack_rows(x: torch.Tensor, s: torch.Tensor | None = None, t: torch.Tensor | None = None, absmean: bool = False,
              threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float (M, K) -> int64 words (M, ceil(K / 64)) of [x * s + t >= 0], and mean |x * s + t| per row."""
    x = _f32(x)
    m, k = x.shape
    kw = math.ceil(k / 64)
    words = torch.empty(m, kw, dtype=torch.int64)
    am = torch.empty(m, dtype=torch.float32) if absmean else None
    s, t = _f32(s), _f32(t)
    lib().effdnn_pack_rows(_ptr(x), m, k, _ptr(s), _ptr(t), _ptr(words), kw, _ptr(am),
                           threads or torch.get_num_threads())
    return words, am


def weight_panels(w_words: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, Kw) words -> panels (ceil(N / 8), Kw, 8): panel[p, k, j] = word k of row 8 p + j (zero rows pad)."""
    w = torch.as_tensor(np.ascontiguousarray(w_words).view(np.int64)) if isinstance(w_words, np.ndarray) else w_words
    n, kw = w.shape
    npan = math.ceil(n / NB)
    padded = torch.zeros(npan * NB, kw, dtype=torch.int64)
    padded[:n] = w
    return padded.reshape(npan, NB, kw).transpose(1, 2).contiguous()


def xnor_gemm(x_words: torch.Tensor, panels: torch.Tensor, n: int, k: int, threads: int | None = None) -> torch.Tensor:
    """int32 (M, N) = k - 2 popcount(x[m] xor w[n]): the +-1 dot products over k bits."""
    x_words = x_words.contiguous()
    m, kw = x_words.shape
    if panels.shape[1] != kw:
        raise ValueError(f"input rows have {kw} words, weights {panels.shape[1]}")
    out = torch.empty(m, n, dtype=torch.int32)
    lib().effdnn_xnor_gemm(_ptr(x_words), m, _ptr(panels), n, kw, k, _ptr(out), threads or torch.get_num_threads())
    return out


def conv_weight_layout(plus: torch.Tensor, per_tap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """bool (N, C, KH, KW) (True = +1) -> (panels of the (i, j, c) rows, int32 (N, KH KW) popcount of each tap),
    the layout ``xnor_conv2d`` reads: channels padded to whole bytes, and each run the kernel reads from the
    packed image (one per kernel row i: KW taps; one per tap when ``per_tap``, for a dilated width) padded
    to whole 64-bit words."""
    n, c, kh, kw = plus.shape
    cb = math.ceil(c / 8) * 8
    bits = torch.zeros(n, kh, kw, cb, dtype=torch.bool)
    bits[..., :c] = plus.permute(0, 2, 3, 1)
    runs = bits.reshape(n, kh * kw if per_tap else kh, -1)  # (N, runs, run bits)
    width = math.ceil(runs.shape[2] / 64) * 64
    padded = torch.zeros(n, runs.shape[1], width, dtype=torch.bool)
    padded[..., :runs.shape[2]] = runs
    wtap = plus.reshape(n, c, kh * kw).sum(1).to(torch.int32).contiguous()
    return weight_panels(pack_words(padded.reshape(n, -1).numpy())), wtap


def conv_words(c: int, kernel: tuple[int, int], per_tap: bool) -> int:
    """Words per output pixel that ``conv_weight_layout`` gives for C input channels."""
    run = math.ceil(c / 8) * (1 if per_tap else kernel[1])  # bytes
    return math.ceil(run / 8) * kernel[0] * (kernel[1] if per_tap else 1)


def channels_last(x: torch.Tensor) -> bool:
    """True when a 4-d tensor's memory is NHWC (torch.channels_last) and not also plain NCHW."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@dataclass
class PackedInput:
    """A binary layer's input as the producing kernel wrote it: sign bits in a zero-padded (B, H + 2 pad[0],
    W + 2 pad[1], ceil(C / 8)) byte image (+ 8 bytes of slack), and the K map's A = mean_c |x s + t|
    (B, H, W) or None. Only a convolution with this padding and C input channels reads it."""

    img: torch.Tensor
    A: torch.Tensor | None
    shape: tuple[int, int, int, int]  # B, C, H, W
    pad: tuple[int, int]


def xnor_conv2d(x: torch.Tensor | PackedInput, s: torch.Tensor, t: torch.Tensor, panels: torch.Tensor,
                wtap: torch.Tensor, n: int, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], scale: torch.Tensor, bias: torch.Tensor | None,
                k_scaling: bool, post_scale: torch.Tensor | None = None, post_shift: torch.Tensor | None = None,
                relu: bool = False, residual: torch.Tensor | None = None, relu_add: bool = False,
                next_input: tuple[torch.Tensor, torch.Tensor, tuple[int, int], bool] | None = None,
                relu_in: bool = False, threads: int | None = None) -> torch.Tensor | PackedInput:
    """(B, C, H, W) float (NCHW or channels_last) or a ``PackedInput`` -> (B, N, Ho, Wo) channels_last:
    sign(x s + t) (*) W_+-1 by XNOR-popcount, * scale[n] (* XNOR-Net's K map of |x s + t|), + bias, then
    * post_scale + post_shift (a folded BatchNorm) and ReLU when given, then + residual (B, N, Ho, Wo) and
    ReLU (``relu_add``) when given; zero padding contributes 0 (the popcount is corrected).
    ``next_input`` = (s', t', padding', K map'): return the next binary convolution's ``PackedInput``
    (sign(y s' + t') bits and its A) instead of y. ``relu_in``: x goes through a ReLU first."""
    keep = []  # tensors whose pointers the kernel reads

    def ptr(v: torch.Tensor | None) -> int:
        if v is None:
            return 0
        keep.append(v)
        return v.data_ptr()

    if isinstance(x, PackedInput):
        b, c, h, w = x.shape
        if x.pad != tuple(padding) or (k_scaling and x.A is None):
            raise ValueError("the packed input was laid out for another padding / without its K map")
        if relu_in:
            raise ValueError("a packed input has no ReLU to apply")
        nhwc, src = False, [0, 0, 0]
        packed = [ptr(x.img), ptr(x.A)]
    else:
        nhwc = channels_last(x)
        x = x.detach().to(torch.float32)
        x = x if nhwc else x.contiguous()
        b, c, h, w = x.shape
        src, packed = [ptr(x), ptr(_f32(s)), ptr(_f32(t))], [0, 0]
    if panels.shape[1] != conv_words(c, kernel, dilation[1] != 1):
        raise ValueError(f"weights laid out for another geometry ({panels.shape[1]} words per pixel)")
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    r_nchw = False
    if residual is not None:  # NHWC (channels_last), or NCHW (the kernel transposes it row by row)
        if residual.shape != (b, n, ho, wo):
            raise ValueError(f"residual of shape {tuple(residual.shape)}, expected {(b, n, ho, wo)}")
        residual = residual.detach().to(torch.float32)
        r_nchw = not channels_last(residual)
        residual = residual.contiguous() if r_nchw else residual
    y, out, nxt = None, [0, 0, 0, 0], (0, 0, 0)
    if next_input is None:
        y = torch.empty(b, ho, wo, n, dtype=torch.float32)
    else:
        s2, t2, pad2, k2 = next_input
        img = torch.zeros(b * (ho + 2 * pad2[0]) * (wo + 2 * pad2[1]) * math.ceil(n / 8) + 8, dtype=torch.uint8)
        a2 = torch.empty(b, ho, wo, dtype=torch.float32) if k2 else None
        out = [ptr(img), ptr(a2), ptr(_f32(s2)), ptr(_f32(t2))]
        nxt = (pad2[0], pad2[1], int(k2))
    shape = torch.tensor([b, c, h, w, n, panels.shape[1], *kernel, *stride, *padding, *dilation, int(nhwc), int(relu),
                          int(relu_add), int(k_scaling), *nxt, int(relu_in), int(r_nchw)], dtype=torch.int64)
    ptrs = torch.tensor([*src, ptr(panels), ptr(wtap), ptr(_f32(scale)), ptr(_f32(bias)), ptr(_f32(post_scale)),
                         ptr(_f32(post_shift)), ptr(residual), ptr(y), *packed, *out], dtype=torch.uint64)
    lib().effdnn_xnor_conv2d(shape.data_ptr(), ptrs.data_ptr(), threads or torch.get_num_threads())
    if next_input is not None:
        return PackedInput(img, a2, (b, n, ho, wo), tuple(pad2))
    return y.permute(0, 3, 1, 2)


__all__ = ["PackedInput", "channels_last", "conv_weight_layout", "conv_words", "pack_rows", "weight_panels", "xnor_conv2d", "xnor_gemm"]

"""Bit packing and the XNOR + popcount dot product of +-1 vectors (numpy's native ``bitwise_count``).

A +-1 (or {0, 1}) matrix of shape (R, K) is stored as ``pack_bits`` -> uint8 (R, ceil(K / 8)), bit i of
a row in little-endian bit order; that is its real deployed size (``packed_bytes``). For the popcount
dot product the rows are widened to whole 64-bit words (zero padding, masked off).

Rastegari et al. 2016 (XNOR-Net), section 3.2: for a, b in {-1, +1}^K with bit 1 = +1,
``a . b = 2 * popcount(XNOR(a, b)) - K``; with a validity mask m (positions a convolution pads with zero)
``a . b = 2 * popcount(XNOR(a, b) & m) - popcount(m)``; equivalently a . b = K - 2 popcount(a xor b).

``xnor_popcount_matmul`` (numpy) is the reference; ``xnor_matmul`` computes the same integers with the
compiled kernels (``quant/kernels``: AVX-512 VPOPCNTDQ / AVX2 vpshufb / scalar popcount, OpenMP) and
falls back to the reference when they are unavailable.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def packed_bytes(rows: int, k: int, planes: int = 1) -> int:
    """Bytes of ``planes`` bit planes of a (rows, k) matrix, each row padded to a whole byte."""
    return planes * rows * math.ceil(k / 8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool (R, K) -> uint8 (R, ceil(K / 8)), little-endian bit order within a byte."""
    arr = np.packbits(bits.detach().cpu().numpy().astype(bool), axis=1, bitorder="little")
    return torch.from_numpy(arr)


def unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 (R, ceil(K / 8)) -> bool (R, K)."""
    arr = np.unpackbits(packed.cpu().numpy(), axis=1, count=k, bitorder="little")
    return torch.from_numpy(arr.astype(bool))


def to_words(packed: np.ndarray) -> np.ndarray:
    """uint8 (R, B) -> uint64 (R, ceil(B / 8)), zero padded."""
    r, b = packed.shape
    w = math.ceil(b / 8)
    out = np.zeros((r, w * 8), dtype=np.uint8)
    out[:, :b] = packed
    return out.view(np.uint64)


def pack_words(bits: np.ndarray) -> np.ndarray:
    """bool (R, K) -> uint64 words (R, ceil(K / 64))."""
    return to_words(np.packbits(bits, axis=1, bitorder="little"))


def xnor_popcount_matmul(x_words: np.ndarray, w_words: np.ndarray, k: int, mask_words: np.ndarray | None = None,
                         chunk_bytes: int = 1 << 24) -> np.ndarray:
    """Integer dot products of +-1 rows: x (M, Kw) words, w (N, Kw) words -> int32 (M, N).

    ``mask_words`` (M, Kw): valid positions per row of x (None: the first ``k`` bits of every row)."""
    m, kw = x_words.shape
    n = w_words.shape[0]
    if mask_words is None:
        mask = pack_words(np.ones((1, k), dtype=bool))  # (1, Kw)
        valid = np.full((m, 1), k, dtype=np.int32)
    else:
        mask = mask_words
        valid = np.bitwise_count(mask_words).sum(-1, dtype=np.int32)[:, None]  # (M, 1)
    out = np.empty((m, n), dtype=np.int32)
    rows = max(1, chunk_bytes // max(1, n * kw * 8))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        mk = mask if mask.shape[0] == 1 else mask[s:e]
        same = ~(x_words[s:e, None, :] ^ w_words[None, :, :]) & mk[:, None, :]  # (r, N, Kw)
        out[s:e] = np.bitwise_count(same).sum(-1, dtype=np.int32)
    return 2 * out - valid


def xnor_matmul(x_words: np.ndarray, w_words: np.ndarray, k: int, mask_words: np.ndarray | None = None,
                threads: int | None = None) -> np.ndarray:
    """``xnor_popcount_matmul`` (same arguments, same int32 result, bit-exact) on the compiled kernels.

    The kernel computes G(a, w) = k - 2 popcount(a xor w). With a mask m (valid positions) and its
    complement u = ~m within k: popcount((x xor w) & m) = popcount((x & m) xor w) - popcount(w & u), and
    popcount(w & u) = (popcount(w) + popcount(u) - popcount(w xor u)) / 2: two kernel calls."""
    from .kernels import lib

    if lib() is None:
        return xnor_popcount_matmul(x_words, w_words, k, mask_words)
    from .kernels.ops import weight_panels, xnor_gemm

    kmask = pack_words(np.ones((1, k), dtype=bool))
    if x_words.shape[1] != kmask.shape[1] or w_words.shape[1] != kmask.shape[1]:
        raise ValueError(f"rows must hold ceil({k} / 64) = {kmask.shape[1]} words")
    w = w_words & kmask
    panels, n = weight_panels(w), w.shape[0]
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a).view(np.int64))
    if mask_words is None:
        return xnor_gemm(as_t(x_words & kmask), panels, n, k, threads).numpy()
    m = mask_words & kmask
    u = ~m & kmask
    g1 = xnor_gemm(as_t(x_words & m), panels, n, k, threads).numpy()  # k - 2 popcount(xm ^ w)
    g2 = xnor_gemm(as_t(u), panels, n, k, threads).numpy()  # k - 2 popcount(u ^ w)
    valid = np.bitwise_count(m).sum(-1, dtype=np.int32)[:, None]
    pw = np.bitwise_count(w).sum(-1, dtype=np.int32)[None, :]
    pu = np.bitwise_count(u).sum(-1, dtype=np.int32)[:, None]
    # valid - 2 [popcount(xm ^ w) - popcount(w & u)]
    return (valid - (k - g1) + (pw + pu - (k - g2) // 2)).astype(np.int32)


__all__ = ["pack_bits", "pack_words", "packed_bytes", "to_words", "unpack_bits", "xnor_matmul", "xnor_popcount_matmul"]

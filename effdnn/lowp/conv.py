"""Emulated convolutions of every kind (1-3 spatial dims, groups, stride, dilation, every padding mode,
transposed) as grouped GEMMs on gathered columns.

Every convolution is run as a plain convolution (stride, dilation, groups) over a *virtual* input: the
real input padded (zeros, reflect, replicate or circular; 'same' pads the extra element at the end, as
torch does) and, for a transposed convolution, with ``stride - 1`` zeros inserted between elements and
the kernel flipped. A column index map (:func:`column_index`, one gather per forward) lists, for every
output position and kernel tap, which input element (or the zero slot) it reads (2-d convolutions with
symmetric zero padding use ``F.unfold`` / ``F.fold`` instead: the same columns, no index map), so

* forward: ``Y[g] = cols[g] @ W[g]^T`` per group, reduced over K = (C_in / groups) x kernel taps in the
  weight's order (channel, then taps row-major); structural zeros (padding, inserted zeros) are terms of
  the sum, so chunk boundaries of the emulated accumulator fall where a hardware im2col GEMM has them;
* input gradient: ``dcols[g] = dY[g] @ W[g]`` (reduced over the group's output channels), scattered back
  through the same index map: the overlapping windows and the padding's reflections are summed in
  float64 (exact for these few low-precision terms, so order-independent), rounded once to float32,
  then to the policy's ``out`` format;
* weight gradient: ``dW[g] = dY[g]^T @ cols[g]`` (reduced over batch x output positions, batch-major);
* bias gradient: the float64 sum of the errors over batch and positions, rounded likewise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .policy import GemmPolicy, LowpMixin, LowpStats, exact_sum, fresh, gemm, round_errors, round_to


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution as the emulation runs it; ``pads`` (low, high) per spatial dim, negative crops;
    ``insert``: zero insertion of a transposed convolution (its stride; 1 for a plain convolution)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    mode: str
    groups: int
    insert: tuple[int, ...]


_INDEX_CACHE: dict[tuple, tuple[torch.Tensor, tuple[int, ...]]] = {}
_CACHE_NUMEL = 1 << 20  # index maps up to this size are kept (per layer shape); larger ones are rebuilt per call


def column_index(geom: ConvGeometry, channels: int, spatial: tuple[int, ...],
                 device: torch.device) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(G, L, K_g) indices into one sample's flattened input (``channels * prod(spatial)``: the zero
    slot) and the output's spatial size."""
    key = (geom, channels, spatial, device)
    hit = _INDEX_CACHE.get(key)
    if hit is not None:
        return hit
    idx, out = _build_index(geom, channels, spatial, device)
    if idx.numel() <= _CACHE_NUMEL and len(_INDEX_CACHE) < 512:
        _INDEX_CACHE[key] = idx, out
    return idx, out


def _build_index(geom: ConvGeometry, channels: int, spatial: tuple[int, ...],
                 device: torch.device) -> tuple[torch.Tensor, tuple[int, ...]]:
    n = channels * math.prod(spatial)
    t = torch.arange(n, dtype=torch.float64, device=device).reshape(1, channels, *spatial)
    if any(s > 1 for s in geom.insert):  # transposed convolution: zeros between the input elements
        holes = t.new_full((1, channels, *[(d - 1) * s + 1 for d, s in zip(spatial, geom.insert)]), -1.0)
        holes[(slice(None), slice(None), *[slice(None, None, s) for s in geom.insert])] = t
        t = holes
    flat_pads = [p for lo_hi in reversed(geom.pads) for p in lo_hi]
    if any(flat_pads):
        t = F.pad(t, flat_pads, value=-1.0) if geom.mode == "zeros" else F.pad(t, flat_pads, mode=geom.mode)
    d = len(spatial)
    for i, (k, s, dil) in enumerate(zip(geom.kernel, geom.stride, geom.dilation)):
        t = t.unfold(2 + i, dil * (k - 1) + 1, s)[..., ::dil]  # windows along dim i, taps last
    out = tuple(t.shape[2:2 + d])
    g = geom.groups
    t = t.reshape(g, channels // g, *out, *geom.kernel)  # (G, C_g, O..., k...)
    t = t.movedim(1, 1 + d).reshape(g, math.prod(out), -1)  # (G, L, C_g * prod(k))
    return torch.where(t < 0, float(n), t).to(torch.int32 if n < 2**31 - 1 else torch.int64), out


def _unfoldable(geom: ConvGeometry, x: torch.Tensor) -> bool:
    """A 2-d convolution with symmetric zero padding: F.unfold / F.fold, no index map."""
    return x.dim() == 4 and geom.mode == "zeros" and geom.insert == (1, 1) and all(lo == hi >= 0 for lo, hi in geom.pads)


def gather_columns(xq: torch.Tensor, geom: ConvGeometry) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor | None]:
    """(G, B*L, K_g) columns (K order: channel, then taps row-major), the output's spatial size, and the
    index map (None where F.unfold did the gather)."""
    b, c = xq.shape[:2]
    g = geom.groups
    if _unfoldable(geom, xq):
        cols = F.unfold(xq, geom.kernel, geom.dilation, tuple(lo for lo, _ in geom.pads), geom.stride)  # (B, K, L)
        out = tuple((n + 2 * lo - dl * (k - 1) - 1) // s + 1
                    for n, (lo, _), dl, k, s in zip(xq.shape[2:], geom.pads, geom.dilation, geom.kernel, geom.stride))
        cols = cols.reshape(b, g, -1, cols.shape[-1]).permute(1, 0, 3, 2)  # (G, B, L, K_g)
        return cols.reshape(g, -1, cols.shape[-1]), out, None
    idx, out = column_index(geom, c, tuple(xq.shape[2:]), xq.device)
    xf = torch.cat([xq.reshape(b, -1), xq.new_zeros(b, 1)], 1)  # (B, n + 1): the zero slot last
    return xf[:, idx].transpose(0, 1).reshape(g, -1, idx.shape[2]), out, idx


def scatter_columns(gcols: torch.Tensor, idx: torch.Tensor | None, geom: ConvGeometry,
                    in_shape: torch.Size) -> torch.Tensor:
    """The adjoint of :func:`gather_columns`: (G, B*L, K_g) column gradients summed in float64 into the
    input (window overlaps, padding reflections), rounded once to float32."""
    g, _, kg = gcols.shape
    b, n = in_shape[0], math.prod(in_shape[1:])
    src = gcols.reshape(g, b, -1, kg).transpose(0, 1).double()  # (B, G, L, K_g)
    if idx is None:
        src = src.permute(0, 1, 3, 2).reshape(b, g * kg, -1)  # (B, K, L)
        return F.fold(src, tuple(in_shape[2:]), geom.kernel, geom.dilation, tuple(lo for lo, _ in geom.pads),
                      geom.stride).float()
    acc = src.new_zeros(b, n + 1).index_add_(1, idx.reshape(-1), src.reshape(b, -1))
    return acc[:, :n].float().reshape(in_shape)


class _LowpConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geom: ConvGeometry, policy: GemmPolicy, stats: LowpStats | None):
        b = x.shape[0]  # x (B, C, *S); weight (N, C_g, *k) of the plain convolution
        xq, wq = round_to(x, policy.act), round_to(weight, policy.weight)
        cols, out, idx = gather_columns(xq, geom)  # (G, B*L, K_g)
        g, _, kg = cols.shape
        w3 = wq.reshape(g, -1, kg)  # (G, N_g, K_g)
        y = gemm(cols, w3.transpose(1, 2), policy)  # (G, B*L, N_g)
        y = y.reshape(g, b, -1, w3.shape[1]).permute(1, 0, 3, 2).reshape(b, -1, *out)  # (B, N, *O)
        if bias is not None:
            y = y + bias.reshape(-1, *[1] * len(out))
        ctx.save_for_backward(cols, w3)
        ctx.policy, ctx.stats, ctx.has_bias, ctx.idx, ctx.geom = policy, stats, bias is not None, idx, geom
        ctx.in_shape, ctx.w_shape = x.shape, weight.shape
        return fresh(round_to(y, policy.out))

    @staticmethod
    def backward(ctx, gy):  # gy (B, N, *O)
        cols, w3 = ctx.saved_tensors
        p: GemmPolicy = ctx.policy
        g, _, kg = cols.shape
        b = gy.shape[0]
        e = round_errors(gy, p.grad, ctx.stats).reshape(b, g, w3.shape[1], -1)  # (B, G, N_g, L)
        e = e.permute(1, 0, 3, 2).reshape(g, -1, w3.shape[1])  # (G, B*L, N_g)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = round_to(scatter_columns(gemm(e, w3, p), ctx.idx, ctx.geom, ctx.in_shape), p.out)
        if ctx.needs_input_grad[1]:
            gw = round_to(gemm(e.transpose(1, 2).contiguous(), cols, p), p.out).reshape(ctx.w_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = round_to(exact_sum(e, 1).reshape(-1), p.out)
        return gx, gw, gb, None, None, None


def _tuple(v: int | tuple[int, ...], d: int) -> tuple[int, ...]:
    return (v,) * d if isinstance(v, int) else tuple(v)


def conv_geometry(m: nn.modules.conv._ConvNd) -> ConvGeometry:
    """The geometry of a plain ``nn.Conv1d/2d/3d``."""
    d = len(m.kernel_size)
    if m.padding == "valid":
        pads = ((0, 0),) * d
    elif m.padding == "same":  # as torch: the odd element of the total at the end
        total = [dil * (k - 1) for dil, k in zip(m.dilation, m.kernel_size)]
        pads = tuple((t // 2, t - t // 2) for t in total)
    else:
        pads = tuple((p, p) for p in _tuple(m.padding, d))
    return ConvGeometry(tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), pads, m.padding_mode, m.groups, (1,) * d)


def transposed_geometry(m: nn.modules.conv._ConvTransposeNd, output_padding: list[int]) -> ConvGeometry:
    """A transposed convolution as a stride-1 convolution over its input with ``stride - 1`` zeros
    inserted, padded by ``dilation * (k - 1) - padding`` (plus ``output_padding`` at the end)."""
    d = len(m.kernel_size)
    reach = [dil * (k - 1) for dil, k in zip(m.dilation, m.kernel_size)]
    pads = tuple((r - p, r - p + op) for r, p, op in zip(reach, _tuple(m.padding, d), output_padding))
    return ConvGeometry(tuple(m.kernel_size), (1,) * d, tuple(m.dilation), pads, "zeros", m.groups, tuple(m.stride))


def transposed_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_in, C_out/G, *k) transposed-convolution weight -> (C_out, C_in/G, *k) flipped convolution weight."""
    c_in, n_g, *k = w.shape
    w = w.reshape(groups, c_in // groups, n_g, *k).transpose(1, 2)  # (G, N_g, C_g, *k)
    return w.flip(list(range(3, 3 + len(k)))).reshape(groups * n_g, c_in // groups, *k)


def _batched(x: torch.Tensor, d: int) -> tuple[torch.Tensor, bool]:
    return (x.unsqueeze(0), True) if x.dim() == d + 1 else (x, False)


class _LowpConvNd(LowpMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, N, *O); unbatched (C, *S) too
        x, unbatched = _batched(x, len(self.kernel_size))  # type: ignore[attr-defined]
        self.lowp_calls += 1
        y = _LowpConvFn.apply(x, self.weight, self.bias, conv_geometry(self),  # type: ignore[arg-type]
                              self.lowp_policy, self.lowp_stats)
        return y.squeeze(0) if unbatched else y


class _LowpConvTransposeNd(LowpMixin):
    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        d = len(self.kernel_size)  # type: ignore[attr-defined]
        x, unbatched = _batched(x, d)
        self.lowp_calls += 1
        op = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,  # type: ignore[attr-defined]
                                  d, self.dilation)  # type: ignore[attr-defined]
        w = transposed_weight(self.weight, self.groups)  # type: ignore[attr-defined]
        y = _LowpConvFn.apply(x, w, self.bias, transposed_geometry(self, op),  # type: ignore[arg-type]
                              self.lowp_policy, self.lowp_stats)
        return y.squeeze(0) if unbatched else y

    def effdnn_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        """Every input element meets C_out/G x kernel taps weights (the inserted zeros are not counted)."""
        w = self.weight  # type: ignore[attr-defined]
        return x.numel() * (w.numel() // w.shape[0])


class LowpConv1d(_LowpConvNd, nn.Conv1d):
    pass


class LowpConv2d(_LowpConvNd, nn.Conv2d):
    pass


class LowpConv3d(_LowpConvNd, nn.Conv3d):
    pass


class LowpConvTranspose1d(_LowpConvTransposeNd, nn.ConvTranspose1d):
    pass


class LowpConvTranspose2d(_LowpConvTransposeNd, nn.ConvTranspose2d):
    pass


class LowpConvTranspose3d(_LowpConvTransposeNd, nn.ConvTranspose3d):
    pass


CONV_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: LowpConv1d, nn.Conv2d: LowpConv2d, nn.Conv3d: LowpConv3d,
    nn.ConvTranspose1d: LowpConvTranspose1d, nn.ConvTranspose2d: LowpConvTranspose2d,
    nn.ConvTranspose3d: LowpConvTranspose3d,
}

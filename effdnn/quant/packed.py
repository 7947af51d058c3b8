"""Bit-packed deployment of binary / ternary layers, and the packed inference path.

``pack_model(model)`` replaces every ``BinaryConv2d`` / ``BinaryLinear`` of a binarised model (bc, bnn,
bwn, xnor, twn, ttq) with a ``PackedBinaryLayer`` that stores only
- the weight codes bit-packed: one sign plane (1 bit per weight; bit 1 = -1) and, for ternary layers, a
  non-zero plane (2 bits per weight), rows padded to whole bytes;
- the scales (fp32: one per layer or per output channel; W_p and W_n for TTQ), the fp32 bias, and for
  a binary input the BatchNorm before the sign;
and computes
- binary weights x binary inputs (BNN, XNOR-Net): XNOR + popcount on 64-bit words
  (``bitpack.xnor_popcount_matmul``), positions a convolution pads with zero masked off, then
  * scale (* K for XNOR-Net);
- binary / ternary weights x real inputs (BC, BWN, TWN, TTQ): sign-add: the inputs the weight selects
  are summed, y = pos_scale * sum_{c=+1} x - neg_scale * sum_{c=-1} x (on a CPU the sums are two
  {0, 1}-matrix products).
Its outputs equal the fake-quantised model's up to float summation order (tests/quant). ``storage_bits``
of a packed layer is the size of the buffers it actually holds; ``effdnn_precision`` reports it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cost.precision import LayerPrecision
from .bitpack import pack_bits, pack_words, to_words, unpack_bits, xnor_popcount_matmul
from .methods.binary_layers import BinaryConv2d, BinaryLayerMixin, BinaryLinear


class PackedBinaryLayer(nn.Module):
    """Deployed form of one BinaryConv2d / BinaryLinear (eval mode; inference only)."""

    def __init__(self, layer: BinaryLayerMixin) -> None:
        super().__init__()
        w = layer.weight.detach()  # type: ignore[attr-defined]
        codes, pos, neg = layer.weight_quant.codes_and_scales(w)  # type: ignore[union-attr]
        codes = codes.flatten(1)  # (N, K)
        self.out_features, self.k = codes.shape
        self.ternary = layer.weight_quant.levels == 3  # type: ignore[union-attr]
        self.register_buffer("sign_bits", pack_bits(codes < 0))  # (N, ceil(K / 8)) uint8
        self.register_buffer("nonzero_bits", pack_bits(codes != 0) if self.ternary else None)
        self.register_buffer("pos_scale", pos.detach().clone().float())
        self.register_buffer("neg_scale", None if neg is None else neg.detach().clone().float())
        b = getattr(layer, "bias", None)
        self.register_buffer("bias", None if b is None else b.detach().clone())
        self.binary_input = layer.input_quant is not None
        self.k_scaling = bool(layer.k_scaling) and self.binary_input
        if self.binary_input:
            bn = layer.input_quant.bn  # type: ignore[union-attr]
            self.eps = bn.eps
            for n in ("running_mean", "running_var", "weight", "bias"):
                self.register_buffer(f"bn_{n}", getattr(bn, n).detach().clone())
        self.conv = isinstance(layer, BinaryConv2d)
        if self.conv:
            self.kernel_size, self.stride = layer.kernel_size, layer.stride  # type: ignore[attr-defined]
            self.padding, self.dilation = layer.padding, layer.dilation  # type: ignore[attr-defined]
            if layer.groups != 1 or isinstance(self.padding, str):  # type: ignore[attr-defined]
                raise ValueError("packed inference supports groups=1 and numeric padding")
        self.label = layer.effdnn_precision().label

    # -- storage --------------------------------------------------------------------------------------
    def storage_bits(self) -> int:
        return sum(t.numel() * t.element_size() * 8 for t in self.buffers())

    def effdnn_precision(self) -> LayerPrecision:
        return LayerPrecision(weight_bits=2 if self.ternary else 1, act_bits=1 if self.binary_input else 32,
                              weight_kind="int", act_kind="int" if self.binary_input else "float",
                              storage_bits=self.storage_bits(), label=self.label + " (packed)")

    def effdnn_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        """Dense-equivalent MACs of the packed kernel (XNOR-popcount or sign-add: K per output element),
        plus XNOR-Net's K map (a box filter over mean |I|); the cost model traces none of these ops."""
        macs = out.numel() * self.k
        if self.k_scaling and self.conv:
            macs += out.numel() // self.out_features * self.kernel_size[0] * self.kernel_size[1]
        return macs

    # -- inference ------------------------------------------------------------------------------------
    def _scale(self, s: torch.Tensor | None) -> torch.Tensor:
        s = self.pos_scale if s is None else s
        return s.reshape(1, -1)  # (1, N) or (1, 1)

    def _cols(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(rows, K) operand and the output's spatial shape."""
        if not self.conv:
            return x, ()
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, K, L)
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return cols.transpose(1, 2).reshape(-1, self.k), (ho, wo)  # (B * L, K)

    def _binary_dot(self, a: torch.Tensor) -> torch.Tensor:
        """XNOR + popcount of sign(a) with the +-1 weights: integer (rows, N)."""
        cols, _ = self._cols(a)
        x_words = pack_words((cols >= 0).cpu().numpy())  # bit 1 = +1
        w_words = to_words(np.bitwise_not(self.sign_bits.cpu().numpy()))  # bit 1 = +1 (padding bits masked)
        mask = None
        if self.conv and any(self.padding):
            ones = torch.ones(1, a.shape[1], *a.shape[2:], dtype=a.dtype)
            valid, _ = self._cols(ones)  # (L, K): 0 where the convolution pads
            mask = pack_words(valid.numpy() > 0)
            mask = np.tile(mask, (a.shape[0], 1))  # (B * L, Kw)
        return torch.from_numpy(xnor_popcount_matmul(x_words, w_words, self.k, mask))

    def _sign_add(self, x: torch.Tensor) -> torch.Tensor:
        """pos_scale * sum_{c=+1} x - neg_scale * sum_{c=-1} x: (rows, N)."""
        cols, _ = self._cols(x)
        neg = unpack_bits(self.sign_bits, self.k)  # (N, K)
        pos = ~neg
        if self.ternary:
            nz = unpack_bits(self.nonzero_bits, self.k)
            pos, neg = pos & nz, neg & nz
        dt = cols.dtype
        return (cols @ pos.to(dt).T) * self._scale(self.pos_scale) - (cols @ neg.to(dt).T) * self._scale(self.neg_scale)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.binary_input:
            a = F.batch_norm(x, self.bn_running_mean, self.bn_running_var, self.bn_weight, self.bn_bias, False, 0.0, self.eps)
            y = self._binary_dot(a).to(x.dtype) * self._scale(self.pos_scale)  # (rows, N)
        else:
            a = x
            y = self._sign_add(x)
        if self.conv:
            _, (ho, wo) = self._cols(x[:1])
            y = y.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)  # (B, N, Ho, Wo)
            if self.k_scaling:
                A = a.abs().mean(1, keepdim=True)
                box = torch.full((1, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]), dtype=a.dtype)
                y = y * F.conv2d(A, box, None, self.stride, self.padding, self.dilation)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        if self.k_scaling:
            y = y * a.abs().mean(-1, keepdim=True)
        return y if self.bias is None else y + self.bias


def pack_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every binary / ternary layer bit-packed."""
    model = copy.deepcopy(model).eval()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    for name, m in targets:
        model.set_submodule(name, PackedBinaryLayer(m))
    return model


__all__ = ["PackedBinaryLayer", "pack_model"]

"""Bit-packed deployment of binary / ternary layers, and the packed inference path.

``pack_model(model)`` replaces every ``BinaryConv2d`` / ``BinaryLinear`` of a binarised model (bc, bnn,
bwn, xnor, twn, ttq) with a ``PackedBinaryLayer`` that stores only
- the weight codes bit-packed: one sign plane (1 bit per weight; bit 1 = -1) and, for ternary layers, a
  non-zero plane (2 bits per weight), rows padded to whole bytes;
- the scales (fp32: one per layer or per output channel; W_p and W_n for TTQ), the fp32 bias, and for
  a binary input the BatchNorm before the sign;
and computes
- binary weights x binary inputs (BNN, XNOR-Net): XNOR + popcount on 64-bit words (Rastegari et al.
  2016: a . b = K - 2 popcount(a xor b)), positions a convolution pads with zero contributing 0, then
  * scale (* K for XNOR-Net). Fast path: the compiled kernels (``quant/kernels``: BN -> sign -> bit
  image -> popcount of each window read in place -> scale, K map and bias in one pass, NHWC output,
  OpenMP on torch's thread count), with the folded BatchNorm / ReLU / residual join and the packed-bits
  hand-off of ``packed_fuse``; fallback and reference: ``bitpack.xnor_popcount_matmul`` (numpy),
  ``forward_reference`` (the folded modules as separate torch ops);
- binary / ternary weights x real inputs (BC, BWN, TWN, TTQ): sign-add: the inputs the weight selects
  are summed, y = pos_scale * sum_{c=+1} x - neg_scale * sum_{c=-1} x. Fast path: one fp32 convolution /
  GEMM (oneDNN / MKL) against the {-1, 0, +1} codes, then * scale (one scale: exact integer sums for
  integer inputs), or against the decoded weights for TTQ's two scales; the decoded codes are built on
  first use and are not buffers (storage stays the packed planes). Reference: two {0, 1}-matrix products.
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
from . import kernels
from .bitpack import pack_bits, pack_words, to_words, unpack_bits, xnor_popcount_matmul
from .fold_bn import fold_batchnorm
from .kernels.ops import PackedInput
from .methods.binary_layers import BinaryConv2d, BinaryLayerMixin, BinaryLinear
from .packed_fuse import (
    fold_input_relus,
    fuse_epilogues,
    fuse_residuals,
    link_packed_inputs,
)


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
        self.post_relu = False  # set_epilogue: a folded BatchNorm (post_bn_* buffers) and / or ReLU
        self.residual_relu: bool | None = None  # set_residual: forward(x, r) adds r (then a ReLU when True)
        self.pre_relu = False  # set_input_relu: a ReLU on the input, before the BatchNorm and sign

    # -- folded epilogue (packed_fuse) ----------------------------------------------------------------
    def accepts_epilogue(self) -> bool:
        """Binary-input convolutions: the compiled kernel applies a per-channel affine map and a ReLU."""
        return self.binary_input and self.conv

    def set_epilogue(self, bn: nn.BatchNorm2d | None, relu: bool) -> None:
        """Take over the eval-mode ``bn`` (then ``relu``) that reads this layer's output."""
        if bn is not None:
            self.post_eps = bn.eps
            n = self.out_features
            ones, zeros = torch.ones(n), torch.zeros(n)
            for name, v, default in (("running_mean", bn.running_mean, zeros), ("running_var", bn.running_var, ones),
                                     ("weight", bn.weight, ones), ("bias", bn.bias, zeros)):
                self.register_buffer(f"post_bn_{name}", (default if v is None else v).detach().clone().float())
        self.post_relu = relu
        self.__dict__.pop("_fast", None)

    def set_residual(self, relu: bool) -> None:
        """forward(x, r) ends with + r (a residual join that reads this layer's output), then ReLU if ``relu``."""
        self.residual_relu = relu

    def set_input_relu(self) -> None:
        """Take over the ReLU module whose output only this layer reads (applied before its BatchNorm)."""
        self.pre_relu = True

    def set_next(self, consumer: PackedBinaryLayer | None) -> None:
        """Hand ``consumer`` (the binary convolution that alone reads this layer's folded output) its packed
        input, sign bits and K map written by this layer's kernel, instead of a float tensor (not while
        hooks observe either layer: they then see floats)."""
        self.__dict__["_next"] = consumer

    def _next_input(self) -> tuple | None:
        nxt = self.__dict__.get("_next")
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (self, nxt) if m is not None)
        if nxt is None or hooked or nn.modules.module._global_forward_hooks or \
                nn.modules.module._global_forward_pre_hooks:
            return None
        st = nxt._fast_state()
        return st["s"], st["t"], nxt.padding, nxt.k_scaling

    def _post_reference(self, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The folded modules as they ran: BatchNorm (eval), ReLU, + residual, ReLU."""
        if hasattr(self, "post_bn_running_mean"):
            y = F.batch_norm(y, self.post_bn_running_mean, self.post_bn_running_var, self.post_bn_weight,
                             self.post_bn_bias, False, 0.0, self.post_eps)
        y = F.relu(y) if self.post_relu else y
        if residual is not None:
            y = y + residual
            y = F.relu(y) if self.residual_relu else y
        return y

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

    # -- fast path ----------------------------------------------------------------------------------
    def _fast_state(self) -> dict:
        """Kernel layouts derived from the packed planes, built on first use (plain attributes, not buffers)."""
        st = self.__dict__.get("_fast")
        if st is not None:
            return st
        neg = unpack_bits(self.sign_bits, self.k)  # (N, K)
        n = self.out_features
        if self.binary_input:
            from .kernels.ops import conv_weight_layout, weight_panels
            s = self.bn_weight.float() / torch.sqrt(self.bn_running_var.float() + self.eps)
            st = {"s": s, "t": self.bn_bias.float() - self.bn_running_mean.float() * s,
                  "scale": self.pos_scale.float().expand(n).contiguous()}
            if self.conv:
                kh, kw = self.kernel_size
                st["panels"], st["wtap"] = conv_weight_layout((~neg).reshape(n, -1, kh, kw), self.dilation[1] != 1)
                if hasattr(self, "post_bn_running_mean"):  # eval BatchNorm: y g + h
                    g = self.post_bn_weight / torch.sqrt(self.post_bn_running_var + self.post_eps)
                    st["g"], st["h"] = g, self.post_bn_bias - self.post_bn_running_mean * g
            else:
                st["panels"] = weight_panels(pack_words((~neg).numpy()))
        else:
            pos = ~neg
            if self.ternary:
                nz = unpack_bits(self.nonzero_bits, self.k)
                pos, neg = pos & nz, neg & nz
            if self.neg_scale is None:  # one scale: codes in {-1, 0, +1}, scaled after the sums
                w, post = pos.float() - neg.float(), self.pos_scale.float().reshape(1, -1)
            else:  # TTQ: W_p [c = +1] - W_n [c = -1]
                w, post = pos.float() * self.pos_scale.float().reshape(-1, 1) - neg.float() * self.neg_scale.float().reshape(-1, 1), None
            st = {"w": w.reshape(n, *self._weight_shape()) if self.conv else w, "post": post}
        self.__dict__["_fast"] = st
        return st

    def _weight_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel_size
        return (self.k // (kh * kw), kh, kw)

    def _binary_fast(self, x: torch.Tensor | PackedInput, residual: torch.Tensor | None = None
                     ) -> torch.Tensor | PackedInput:
        from .kernels import ops
        st = self._fast_state()
        if self.conv:
            nxt = self._next_input() if residual is None else None
            return ops.xnor_conv2d(x, st["s"], st["t"], st["panels"], st["wtap"], self.out_features, self.kernel_size,
                                   self.stride, self.padding, self.dilation, st["scale"], self.bias, self.k_scaling,
                                   st.get("g"), st.get("h"), self.post_relu, residual, bool(self.residual_relu), nxt,
                                   self.pre_relu)
        words, beta = ops.pack_rows(x, st["s"], st["t"], absmean=self.k_scaling)
        y = ops.xnor_gemm(words, st["panels"], self.out_features, self.k).float() * st["scale"]
        y = y * beta[:, None] if self.k_scaling else y
        return y if self.bias is None else y + self.bias

    def _sign_add_fast(self, x: torch.Tensor) -> torch.Tensor:
        st = self._fast_state()
        w = st["w"].to(x.dtype)
        bias = None if st["post"] is not None else self.bias
        if self.conv:
            y = F.conv2d(x, w, bias, self.stride, self.padding, self.dilation)
            post = None if st["post"] is None else st["post"].to(x.dtype).reshape(1, -1, 1, 1)
        else:
            y = F.linear(x, w, bias)
            post = None if st["post"] is None else st["post"].to(x.dtype)
        if post is None:
            return y
        y = y * post
        if self.bias is None:
            return y
        return y + (self.bias.view(1, -1, 1, 1) if self.conv else self.bias)

    @torch.no_grad()
    def forward(self, x: torch.Tensor | PackedInput, residual: torch.Tensor | None = None) -> torch.Tensor | PackedInput:
        """The fast kernels when they apply (CPU; float32 for the binary kernels), else the reference.
        ``residual``: the other operand of a folded residual join (``set_residual``); a ``PackedInput``
        (from the layer before, ``set_next``) goes to the kernel as it is."""
        if (residual is None) != (self.residual_relu is None):
            raise ValueError("a residual is given exactly when the layer has a folded residual join")
        if isinstance(x, PackedInput):
            return self._binary_fast(x, residual)
        if x.device.type == "cpu":
            if not self.binary_input:
                return self._sign_add_fast(x)
            if x.dtype == torch.float32 and kernels.lib() is not None:
                return self._binary_fast(x, residual)
        return self.forward_reference(x, residual)

    @torch.no_grad()
    def forward_reference(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The pure path: unfold + numpy XNOR-popcount (binary inputs) or two {0, 1} products (sign-add)."""
        b = x.shape[0]
        x = F.relu(x) if self.pre_relu else x
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
            return self._post_reference(y if self.bias is None else y + self.bias.view(1, -1, 1, 1), residual)
        if self.k_scaling:
            y = y * a.abs().mean(-1, keepdim=True)
        return y if self.bias is None else y + self.bias


def pack_model(model: nn.Module, fuse: bool = True) -> nn.Module:
    """A copy of ``model`` (eval mode) with every binary / ternary layer bit-packed; ``fuse``: BatchNorms
    folded into the real-valued convolutions / linears before them (``fold_bn``), and the BatchNorm
    and ReLU modules that read only a binary-input convolution's output, and a residual add (+ ReLU) after
    them, are folded into its kernel (``packed_fuse``; the reference path still applies them as separate
    ops), a ReLU that only a binary convolution reads goes into its input packing, and a binary
    convolution that alone reads another's output gets its input as packed bits. With a folded residual join the result is a ``torch.fx.GraphModule`` (same submodule names)."""
    model = copy.deepcopy(model).eval()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    for name, m in targets:
        model.set_submodule(name, PackedBinaryLayer(m))
    if fuse:
        fold_batchnorm(model)  # the real-valued layers' (conv / linear, BatchNorm) pairs
        fuse_epilogues(model, PackedBinaryLayer)
        fold_input_relus(model, PackedBinaryLayer)
        model = fuse_residuals(model, PackedBinaryLayer)
        link_packed_inputs(model, PackedBinaryLayer)
    return model


__all__ = ["PackedBinaryLayer", "pack_model"]

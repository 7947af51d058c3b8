"""Integer deployment of quantized Linear layers by swapping modules (no torch.fx: works on any model,
Hugging Face transformers included): ``deploy_linears(model)``.

Each fake-quantized ``QuantLinear`` (PTQ / SmoothQuant / GPTQ) becomes a module that stores its integer
weight codes (int8, or two int4 codes per byte) and fp32 scales, so ``state_dict`` and
``model_bytes`` are the real bytes, and runs on torch's integer CPU kernels:

- ``Int8Linear`` (int8 activations x int8 weights): y_t = s_t * sum_k q_{t,k} c_{j,k} * w_j + b_j with
  per-token (or per-tensor, or static) activation scale s_t (``quant.dynamic``) and per-channel weight
  scale w_j. The integer GEMM is fbgemm's u8 x s8 kernel (``quantized::linear_with_input_q_dq_qweight_dq_
  output_fp32`` fed with the codes, scale 1 and zero point 2^(b-1)), exact while no pair of products
  can saturate its int16 intermediate (AVX2 without VNNI: 2 * max_u8 * max|c| <= 32767, e.g. 7-bit
  activations with 8-bit weights, or 8-bit activations with weights in -64..64); otherwise the exact
  ``torch._int_mm`` (int8 x int8 -> int32), which on this CPU is a slow reference kernel.
- ``IntWeightLinear`` (weight-only int8 / int4, per channel or per group): ``torch._weight_int8pack_mm``
  / ``torch._weight_int4pack_mm_for_cpu`` for few rows; for many rows (>= ``DEQUANT_ROWS``) the codes
  are dequantized once per call and the fp32 GEMM runs (measured faster: benchmarks/minilm.py).

A layer that cannot be deployed (affine weights, per-group int8 activations) is refused in one line
naming it.
"""
from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.precision import LayerPrecision
from ..errors import EffdnnError
from ..formats import IntFormat
from .dynamic import DynamicQuantizer
from .embedding import pack_int4, unpack_int4
from .modules import QuantLinear

DEQUANT_ROWS = 64  # weight-only layers: at least this many input rows -> dequantize + fp32 GEMM
_INT4_TABLE = torch.stack([torch.arange(256) % 16 - 8, torch.arange(256) // 16 - 8], 1).float()  # byte -> codes
_PACKED: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()  # kernel-packed weights


def _weight_codes(m: QuantLinear, name: str) -> tuple[torch.Tensor, torch.Tensor, IntFormat]:
    """(int codes (N, K), scales (N, G), format) of a calibrated symmetric int weight quantizer."""
    wq = m.weight_quant
    if wq is None or not isinstance(wq.fmt, IntFormat) or wq.params is None:
        raise EffdnnError(f"deploy_linears: layer {name}: only int weights deploy as integers")
    fmt, p = wq.fmt, wq.params
    if bool((p.zero_point != 0).any()):
        raise EffdnnError(f"deploy_linears: layer {name}: affine (zero-point) weights are not supported; use symmetric")
    codes = fmt.quantize(m.weight.detach().float(), p)
    scale = p.scale.float().reshape(m.out_features, -1) if fmt.granularity.kind != "per_tensor" \
        else p.scale.float().reshape(1, 1).expand(m.out_features, 1).clone()
    return codes.to(torch.int8), scale.contiguous(), fmt


class _Deployed(nn.Module):
    def _common(self, m: QuantLinear) -> None:
        self.in_features, self.out_features = m.in_features, m.out_features
        self.register_buffer("bias", m.bias.detach().float().clone() if m.bias is not None else None)
        smooth = getattr(m, "smooth_inv", None)
        self.register_buffer("smooth_inv", smooth.detach().clone() if smooth is not None else None)

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.smooth_inv if self.smooth_inv is not None else x

    def _storage(self) -> int:
        return sum(t.numel() * t.element_size() * 8 for t in self.buffers())


class Int8Linear(_Deployed):
    """int8 (or fewer bits) activations x int8 weights on integer GEMM kernels; see the module doc."""

    def __init__(self, m: QuantLinear, name: str) -> None:
        super().__init__()
        self._common(m)
        codes, scale, fmt = _weight_codes(m, name)
        if fmt.granularity.kind == "per_group" or fmt.bits > 8:
            raise EffdnnError(f"deploy_linears: layer {name}: int activations need per-channel int<=8 weights, got {fmt.label}")
        aq = m.input_quant
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale.reshape(-1))
        if isinstance(aq, DynamicQuantizer):
            self.act_kind, self.act_bits, self.act_zero = aq.kind, int(aq.fmt.bits), 2 ** (int(aq.fmt.bits) - 1)
            self.register_buffer("act_scale", None)
        else:
            afmt, ap = aq.fmt, aq.params
            if not isinstance(afmt, IntFormat) or afmt.granularity.kind != "per_tensor" or bool((ap.zero_point != 0).any()) or afmt.bits > 8:
                raise EffdnnError(f"deploy_linears: layer {name}: activations must be dynamic or static symmetric per-tensor int<=8")
            self.act_kind, self.act_bits = "static", int(afmt.bits)
            self.act_qmin, self.act_qmax = afmt.qmin, afmt.qmax
            self.act_zero = -afmt.qmin if afmt.signed else 0
            self.register_buffer("act_scale", ap.scale.float().reshape(()).clone())
        max_u8 = (2 ** (self.act_bits - 1) - 1 + self.act_zero) if self.act_kind != "static" else self.act_qmax + self.act_zero
        self.kernel = "fbgemm" if max_u8 <= 255 and 2 * max_u8 * int(codes.abs().max()) <= 32767 else "int_mm"

    def _codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x / scale, scale): the codes before rounding (fbgemm rounds half-to-even as it reads them,
        ``_gemm`` rounds for ``_int_mm``); |x / s| <= qmax needs no clamp. max|x| per token is
        max(max x, -min x): two reductions that write nothing (on 1440 x 1536 activations 0.5 ms against
        59 ms for ``vector_norm(x, inf, dim=-1)`` and 1.7 ms for ``x.abs().amax(-1)``, 1 thread)."""
        if self.act_kind == "static":
            return torch.clamp(torch.round(x / self.act_scale), self.act_qmin, self.act_qmax), self.act_scale
        qmax = 2 ** (self.act_bits - 1) - 1
        if self.act_kind == "per_token":
            amax = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_())
        else:
            amax = torch.maximum(x.max(), x.min().neg())
        s = amax.clamp_min_(1e-12 * qmax).div_(qmax)
        return torch.div(x, s), s

    def _gemm(self, q: torch.Tensor) -> torch.Tensor:
        """sum_k round(q_{t,k}) c_{j,k} * w_j (float32), exact integer accumulation."""
        if self.kernel == "fbgemm":
            packed = _PACKED.get(self)
            if packed is None:
                w = torch._make_per_channel_quantized_tensor(self.weight_codes, self.weight_scale.double(),
                                                             torch.zeros(self.out_features, dtype=torch.long), 0)
                packed = _PACKED[self] = torch.ops.quantized.linear_prepack(w, None)
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, self.act_zero, packed)
        qi = torch.round(q).to(torch.int8)
        pad = max(0, 17 - qi.shape[0])
        if pad:
            qi = F.pad(qi, (0, 0, 0, pad))
        acc = torch._int_mm(qi, self.weight_codes.t())
        return acc[: q.shape[0]].float() * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = self._smooth(x.reshape(-1, self.in_features).float())
        q, s = self._codes(x2)
        y = self._gemm(q.contiguous())
        y = torch.addcmul(self.bias, y, s) if self.bias is not None else y.mul_(s)
        return y.reshape(*shape[:-1], self.out_features)

    def effdnn_precision(self) -> LayerPrecision:
        return LayerPrecision(weight_bits=8, act_bits=self.act_bits, weight_kind="int", act_kind="int",
                              storage_bits=self._storage(), label=f"w int8 / a int{self.act_bits} {self.act_kind} ({self.kernel})")

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, a int{self.act_bits} {self.act_kind}, kernel={self.kernel}"


class IntWeightLinear(_Deployed):
    """Weight-only int8 / int4 codes (int4: two per byte) with per-channel or per-group fp32 scales."""

    def __init__(self, m: QuantLinear, name: str) -> None:
        super().__init__()
        self._common(m)
        codes, scale, fmt = _weight_codes(m, name)
        self.bits = int(fmt.bits)
        self.group_size = self.in_features // scale.shape[1]
        if self.bits <= 4 and self.in_features % 2 == 0:
            self.register_buffer("weight_codes", pack_int4(codes))
            self.packed4 = True
        else:
            self.register_buffer("weight_codes", codes)
            self.packed4 = False
        self.register_buffer("weight_scale", scale)
        self.kernel = self._torch_kernel()

    def _torch_kernel(self) -> str:
        if self.packed4 and self.out_features % 16 == 0 and self.group_size % 32 == 0:
            return "int4pack"
        if not self.packed4 and self.weight_scale.shape[1] == 1:
            return "int8pack"
        return "dequant"

    def codes(self) -> torch.Tensor:
        return unpack_int4(self.weight_codes) if self.packed4 else self.weight_codes

    def dequantized_weight(self) -> torch.Tensor:
        """codes x scales as fp32 (N, K), in few passes: int4 bytes decode through a 256 x 2 table."""
        n, g = self.out_features, self.weight_scale.shape[1]
        if self.packed4:
            c = F.embedding(self.weight_codes.long(), _INT4_TABLE)  # (N, K/2, 2): low, high nibble
        else:
            c = self.weight_codes
        return torch.mul(c.reshape(n, g, self.group_size), self.weight_scale[:, :, None]).reshape(n, self.in_features)

    def _packed_int4(self) -> tuple[torch.Tensor, torch.Tensor]:
        got = _PACKED.get(self)
        if got is None:
            q = (self.codes().to(torch.int32) + 8).contiguous()
            sz = torch.stack([self.weight_scale.t(), torch.zeros_like(self.weight_scale.t())], -1).contiguous()
            got = _PACKED[self] = (torch._convert_weight_to_int4pack_for_cpu(q, 1), sz)
        return got

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = self._smooth(x.reshape(-1, self.in_features).float())
        if x2.shape[0] >= DEQUANT_ROWS or self.kernel == "dequant":
            y = F.linear(x2, self.dequantized_weight(), self.bias)
        else:
            if self.kernel == "int8pack":
                y = torch._weight_int8pack_mm(x2.contiguous(), self.weight_codes, self.weight_scale.reshape(-1))
            else:
                packed, sz = self._packed_int4()
                y = torch._weight_int4pack_mm_for_cpu(x2.contiguous(), packed, self.group_size, sz)
            y = y + self.bias if self.bias is not None else y
        return y.reshape(*shape[:-1], self.out_features)

    def effdnn_precision(self) -> LayerPrecision:
        return LayerPrecision(weight_bits=self.bits, act_bits=32, weight_kind="int", act_kind="float",
                              storage_bits=self._storage(), label=f"w int{self.bits} g{self.group_size} weight-only")

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, int{self.bits} g{self.group_size}, kernel={self.kernel}"


def deploy_linears(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with every int-quantized ``QuantLinear`` swapped for an
    integer module: ``Int8Linear`` when its input is quantized too, ``IntWeightLinear`` otherwise."""
    model = model if inplace else copy.deepcopy(model)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not found:
        raise EffdnnError("deploy_linears: the model has no quantized Linear layer (quantize it first: ptq / smoothquant / gptq)")
    for name, m in found:
        if m.weight_quant is None:
            continue
        new = Int8Linear(m, name) if m.input_quant is not None else IntWeightLinear(m, name)
        model.set_submodule(name, new)
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's ``state_dict`` (parameters and buffers as stored)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


__all__ = ["DEQUANT_ROWS", "Int8Linear", "IntWeightLinear", "deploy_linears", "model_bytes"]

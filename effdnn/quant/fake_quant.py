"""The fake-quantizer module: one number format + its params (as buffers) + an optional observer.

A ``Quantizer`` is what quantized layers hold for their weight and input (and what QAT methods reuse:
subclass it and register the params as ``nn.Parameter`` for learnable ranges, LSQ, PACT). Modes:

- ``observe``: pass ``x`` through unchanged and feed the observer (calibration);
- ``quantize``: ``fmt.fake_quantize(x, params)`` (straight-through gradient; integer formats on the
  CPU through the fused kernel of ``fused_fq.py``, bit-identical);
- ``off``: identity.

``calibrate(x)`` fits the params to a tensor at once (weights); ``finish_calibration()`` solves them
from the observer (activations). With ``signed="auto"`` an integer activation format becomes unsigned
when every calibrated value was >= 0 (post-ReLU tensors get all 2^b codes).

In ONNX export an integer quantizer of <= 8 bits emits QuantizeLinear / DequantizeLinear (through
torch's fake-quantize ops, which the exporter maps to that pair; a Clip first when bits < 8), and a
weight quantizer of any other format emits its dequantized weight as a constant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from ..errors import EffdnnError
from ..formats import IntFormat, NumberFormat
from .fused_fq import fake_quantize_int
from .observers import Observer

Mode = Literal["observe", "quantize", "off"]
Role = Literal["weight", "act"]


def compute_precision(fmt: NumberFormat | None) -> tuple[str, float]:
    """(arithmetic kind, bits) a tensor in ``fmt`` is computed at: codebook formats decode to floats
    (their centroids are fp32), integer-like formats (int, fixed, log) compute on integer codes."""
    if fmt is None:
        return "float", 32
    kind = getattr(fmt, "compute_kind", "float" if type(fmt).__name__ == "FloatFormat" else "int")
    return kind, float(getattr(fmt, "compute_bits", fmt.bits))


class Quantizer(nn.Module):
    def __init__(self, fmt: NumberFormat, observer: Observer | None = None, role: Role = "act",
                 signed: bool | Literal["auto"] = True, axis: int = 0) -> None:
        super().__init__()
        self.fmt, self.observer, self.role, self.signed_auto, self.axis = fmt, observer, role, signed == "auto", axis
        self.mode: Mode = "observe" if observer is not None else "quantize"
        self._param_type: type | None = None
        self._param_fields: list[str] = []

    # -- params as buffers -------------------------------------------------------------------------
    def set_params(self, params: Any) -> None:
        if params is None:
            self._param_type, self._param_fields = None, []
            return
        self._param_type = type(params)
        self._param_fields = [f.name for f in dataclasses.fields(params)]
        for name in self._param_fields:
            value = getattr(params, name)
            if name in self._buffers or name in self._parameters:
                getattr(self, name).data = value.detach().clone()
            else:
                self.register_buffer(name, value.detach().clone())

    @property
    def params(self) -> Any:
        if self._param_type is None:
            return None
        return self._param_type(**{n: getattr(self, n) for n in self._param_fields})

    # -- calibration -------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fit the params to ``x`` at once (a weight): through the observer when there is one."""
        if not torch.isfinite(x).all():
            raise EffdnnError(f"calibration: {self.observer.name if self.observer else 'a weight'} has NaN or Inf values")
        if self.observer is not None and hasattr(self.fmt, "params_from_range"):
            self.observer.update(x)
            self.finish_calibration()
        else:
            self.set_params(self.fmt.compute_params(x))
            self.observer, self.mode = None, "quantize"

    def finish_calibration(self) -> None:
        if self.observer is None:
            return
        if self.signed_auto and isinstance(self.fmt, IntFormat) and self.observer.nonnegative and self.observer.count:
            self.fmt = dataclasses.replace(self.fmt, signed=False, narrow_range=False)
        self.set_params(self.observer.compute_params(self.fmt))
        self.observer, self.mode = None, "quantize"

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            self.observer.update(x)  # type: ignore[union-attr]
            return x
        if torch.onnx.is_in_onnx_export():
            return self._onnx_forward(x)
        p = self.params
        if isinstance(self.fmt, IntFormat) and (out := fake_quantize_int(self.fmt, x, p)) is not None:
            return out  # the same values and gradient, one compiled pass (fused_fq.py)
        return self.fmt.fake_quantize(x, p)

    def _onnx_forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt, p = self.fmt, self.params
        if isinstance(fmt, IntFormat) and fmt.bits <= 8 and fmt.granularity.kind != "per_group":
            lo, hi = (-128, 127) if fmt.signed else (0, 255)
            # python numbers / fresh tensors: constants in the graph, not ops on buffers
            scales, zps = [float(v) for v in p.scale], [int(round(float(v))) for v in p.zero_point]
            if fmt.granularity.kind == "per_tensor":
                s, z = scales[0], zps[0]
                if fmt.bits < 8 or fmt.narrow_range:  # the b-bit code range inside the 8-bit one
                    x = torch.clamp(x, (fmt.qmin - z) * s, (fmt.qmax - z) * s)
                return torch.fake_quantize_per_tensor_affine(x, s, z, lo, hi)
            if self.role == "weight" or fmt.bits == 8:
                return torch.fake_quantize_per_channel_affine(x, torch.tensor(scales), torch.tensor(zps, dtype=torch.int32),
                                                              fmt.granularity.axis, lo, hi)
        if self.role == "weight":  # computed outside the tracer: a constant initializer in the graph
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                with torch.no_grad():
                    w_hat = self.fmt.fake_quantize(x.detach(), p).clone()
            finally:
                torch._C._set_tracing_state(state)
            grid = getattr(fmt, "int8_grid", None)  # values on an int8 grid (e.g. DoReFa): a QDQ weight
            sz = grid(p) if grid is not None else None
            if sz is not None and torch.allclose(x.detach(), w_hat, rtol=0, atol=1e-4 * float(torch.as_tensor(sz[0]).min())):
                # an already-quantized weight (as convert_qat leaves it): Q / DQ of the initializer, which
                # onnxruntime fuses, instead of re-quantizing a float constant its own way
                s = torch.as_tensor(sz[0], dtype=torch.float32).reshape(-1)
                if s.numel() > 1:  # one scale per output channel
                    return torch.fake_quantize_per_channel_affine(x, s, torch.full_like(s, sz[1], dtype=torch.int32),
                                                                  0, -128, 127)
                return torch.fake_quantize_per_tensor_affine(x, float(s[0]), sz[1], -128, 127)
            return w_hat
        return self.fmt.fake_quantize(x, p)  # elementwise ops (Div, Round, Clip, Mul) in the graph

    def extra_repr(self) -> str:
        return f"{getattr(self.fmt, 'label', self.fmt.name)}, role={self.role}, mode={self.mode}"

    def storage_bits(self, numel: int) -> int:
        return int(self.fmt.storage_bits(numel, self.params))

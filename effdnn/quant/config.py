"""Recipe blocks of the quantization methods: how one tensor (weights or activations) is quantized.

``TensorSpec`` is shared by PTQ and the QAT methods: ``{format: int, bits: 8, granularity: per_channel,
calibrator: kl}``. It is validated when the recipe is read: the format and calibrator must exist and
the format must accept its options (bits in range, ...), so bad input fails before any training.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import EffdnnError
from ..formats import FORMATS, Granularity, NumberFormat
from ..registry import StrictModel
from .observers import CALIBRATORS, Observer, make_observer


class TensorSpec(StrictModel):
    format: str = "int"
    bits: int = 8
    granularity: Literal["per_tensor", "per_channel", "per_group"] = "per_tensor"
    group_size: int | None = Field(None, ge=1)
    symmetric: bool = True
    signed: bool | Literal["auto"] = "auto"  # auto: unsigned when the calibrated tensor is >= 0 (acts)
    narrow_range: bool = False
    calibrator: str = "max"
    percentile: float = Field(99.99, gt=0, le=100)
    init: str = "linear"  # kmeans initialisation: linear | density | random | kmeans++
    iters: int = Field(30, ge=0)  # kmeans Lloyd iterations
    int_bits: int | None = None  # fixed point Qm.n: m
    frac_bits: int | None = None  # fixed point Qm.n: n
    preset: str | None = None  # float: fp32 | fp16 | bf16 | fp8_e4m3 | fp8_e5m2 | eXmY
    exp_bits: int | None = None  # float eXmY: X (with man_bits; else from preset, else from bits: 8 -> e4m3)
    man_bits: int | None = None
    rounding: Literal["nearest", "stochastic"] = "nearest"  # float formats
    log_rounding: Literal["log", "linear"] = "log"  # log format: round in the log domain or in value

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r} (known: {', '.join(FORMATS)})")
        return v

    @field_validator("calibrator")
    @classmethod
    def _known_calibrator(cls, v: str) -> str:
        if v not in CALIBRATORS:
            raise ValueError(f"unknown calibrator {v!r} (known: {', '.join(CALIBRATORS)})")
        return v

    @model_validator(mode="after")
    def _buildable(self) -> "TensorSpec":
        try:
            self.build_format("weight")
        except EffdnnError as e:
            raise ValueError(str(e)) from None
        return self

    def override(self, changes: dict[str, Any]) -> "TensorSpec":
        return TensorSpec.model_validate({**self.model_dump(), **changes})

    def build_format(self, role: str, signed: bool | None = None) -> NumberFormat:
        """The number format for a tensor of ``role`` (weight: channel axis 0; act: channel axis 1)."""
        axis = 0 if role == "weight" else 1
        gran = Granularity(self.granularity, axis, self.group_size if self.granularity == "per_group" else None)
        sgn = (self.signed if isinstance(self.signed, bool) else True) if signed is None else signed
        if self.format == "int":
            return FORMATS["int"](bits=self.bits, signed=sgn, symmetric=self.symmetric, narrow_range=self.narrow_range,
                                  granularity=gran)
        if self.format == "log":
            return FORMATS["log"](bits=self.bits, signed=sgn, granularity=gran, rounding=self.log_rounding)  # type: ignore[call-arg]
        if self.format == "kmeans":
            return FORMATS["kmeans"](bits=self.bits, init=self.init, iters=self.iters, granularity=gran)  # type: ignore[arg-type]
        if self.format == "fixed":
            m = self.int_bits if self.int_bits is not None else 0
            n = self.frac_bits if self.frac_bits is not None else self.bits - m - (1 if sgn else 0)
            return FORMATS["fixed"](int_bits=m, frac_bits=n, signed=sgn)
        if self.format == "float":
            fl = FORMATS["float"]
            if self.preset is not None:
                return fl.from_name(self.preset, rounding=self.rounding)  # type: ignore[attr-defined]
            if self.exp_bits is not None and self.man_bits is not None:
                return fl(self.exp_bits, self.man_bits, rounding=self.rounding)  # type: ignore[call-arg]
            by_width = {8: "fp8_e4m3", 16: "fp16", 32: "fp32"}
            if self.bits not in by_width:
                raise EffdnnError(f"float format: give preset or exp_bits + man_bits for {self.bits} bits")
            return fl.from_name(by_width[self.bits], rounding=self.rounding)  # type: ignore[attr-defined]
        raise EffdnnError(f"format {self.format!r} has no builder")  # pragma: no cover

    def build_observer(self, role: str, name: str) -> Observer:
        axis = 0 if role == "weight" else 1
        gran = Granularity(self.granularity, axis, self.group_size if self.granularity == "per_group" else None)
        kwargs: dict[str, Any] = {"percentile": self.percentile} if self.calibrator == "percentile" else {}
        return make_observer(self.calibrator, gran, name, **kwargs)


class LayerOverride(StrictModel):
    """Per-layer changes: partial weight / act specs (e.g. ``{weight: {bits: 8}}``), or ``fp: true``."""

    weight: dict[str, Any] | None = None
    act: dict[str, Any] | None = None
    fp: bool = False

"""Recipe blocks of the quantization methods: how one tensor (weights or activations) is quantized.

``TensorSpec`` is shared by PTQ and the QAT methods: ``{format: int, bits: 8, granularity: per_channel,
calibrator: kl}``. It is validated when the recipe is read: the format and calibrator must exist, the
format's own options model (``formats.FORMAT_OPTIONS``) must accept the remaining keys, and the format
must accept its values (bits in range, ...), so bad input fails before any training.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import EffdnnError
from ..formats import FORMAT_OPTIONS, FORMATS, FormatOptions, Granularity, NumberFormat
from ..registry import StrictModel
from .observers import CALIBRATORS, Observer, make_observer


class TensorSpec(StrictModel):
    """How one tensor is quantized. The keys below are common to every format; any other key is an
    option of the chosen format, validated by that format's own options model (``FORMAT_OPTIONS``):
    ``{format: int, symmetric: false}``, ``{format: float, preset: fp8_e4m3}``, ``{format: kmeans,
    init: kmeans++}``; an option of another format is an error naming the key."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: str = "int"
    bits: int = 8
    granularity: Literal["per_tensor", "per_channel", "per_group"] = "per_tensor"
    group_size: int | None = Field(None, ge=1)
    signed: bool | Literal["auto"] = "auto"  # auto: unsigned when the calibrated tensor is >= 0 (acts)
    calibrator: str = "max"
    percentile: float = Field(99.99, gt=0, le=100)
    # activations only: scales computed from each tensor at run time (no calibration), one per token
    # (row of the last axis) or one per tensor; int format, symmetric (``quant.dynamic``)
    dynamic: Literal["per_token", "per_tensor"] | None = None

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
        if self.dynamic is not None and (self.format != "int" or (self.model_extra or {}).get("symmetric") is False):
            raise ValueError(f"dynamic: {self.dynamic} scales are for symmetric int formats, not format {self.format!r}")
        try:
            self.build_format("weight")
        except EffdnnError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def options(self) -> FormatOptions:
        """This spec's format options, validated by the format's own options model."""
        cls = FORMAT_OPTIONS[self.format]
        try:
            return cls.model_validate(self.model_extra or {})
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(k) for k in e["loc"])
            if e["type"] == "extra_forbidden":
                known = ", ".join(cls.model_fields) or "none"
                raise EffdnnError(f"{key}: not an option of format {self.format!r} (its options: {known})") from None
            raise EffdnnError(f"{key}: {e['msg']}") from None

    def override(self, changes: dict[str, Any]) -> "TensorSpec":
        """This spec with ``changes``; options of the old format are dropped when the format changes."""
        base = self.model_dump()
        if changes.get("format", self.format) != self.format:
            base = {k: v for k, v in base.items() if k in TensorSpec.model_fields}
        return TensorSpec.model_validate({**base, **changes})

    def build_format(self, role: str, signed: bool | None = None) -> NumberFormat:
        """The number format for a tensor of ``role`` (weight: channel axis 0; act: channel axis 1)."""
        sgn = (self.signed if isinstance(self.signed, bool) else True) if signed is None else signed
        return self.options.build(self.bits, sgn, self._granularity(role))

    def _granularity(self, role: str) -> Granularity:
        axis = 0 if role == "weight" else 1
        return Granularity(self.granularity, axis, self.group_size if self.granularity == "per_group" else None)

    def build_observer(self, role: str, name: str) -> Observer:
        gran = self._granularity(role)
        kwargs: dict[str, Any] = {"percentile": self.percentile} if self.calibrator == "percentile" else {}
        return make_observer(self.calibrator, gran, name, **kwargs)


class LayerOverride(StrictModel):
    """Per-layer changes: partial weight / act specs (e.g. ``{weight: {bits: 8}}``), or ``fp: true``."""

    weight: dict[str, Any] | None = None
    act: dict[str, Any] | None = None
    fp: bool = False

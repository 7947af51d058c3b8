"""The NumberFormat interface every format implements (one file per format in this package).

A format is a small frozen dataclass validated in ``__post_init__`` (bad values raise EffdnnError).
Data-dependent parameters (scales, zero points, codebooks, clip ranges) live in a separate params
object the format's ``compute_params`` (or a calibrator) produces, so one format serves many tensors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from pydantic import BaseModel, ConfigDict

from .ste import ste


class NumberFormat(ABC):
    """quantize: real -> codes; dequantize: codes -> real; fake_quantize: both, with an STE backward."""

    name: str = "format"

    @property
    @abstractmethod
    def bits(self) -> float:
        """Bits per stored element (codes), overheads excluded."""

    @abstractmethod
    def compute_params(self, x: torch.Tensor) -> Any:
        """Parameters fitted to ``x`` (e.g. scale from its range); calibrators may supply others."""

    @abstractmethod
    def quantize(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        """Codes (integer codes, or for float formats the rounded values) of ``x``."""

    @abstractmethod
    def dequantize(self, codes: torch.Tensor, params: Any = None) -> torch.Tensor:
        """Real values of ``codes``."""

    def fake_quantize(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        """dequantize(quantize(x)) in the forward pass; straight-through gradient in the backward pass."""
        return ste(x, self.dequantize(self.quantize(x, params), params))

    def storage_bits(self, numel: int, params: Any = None) -> int:
        """Bits to store ``numel`` elements with these params: codes plus overheads (scales, codebook)."""
        return int(numel * self.bits)


class FormatOptions(BaseModel):
    """The recipe options of one format (``{format: NAME, bits: B, ...options}`` in a tensor spec).

    Each format declares its own subclass with only the keys it understands (an option of another
    format is an error naming the key) and builds itself from them with ``build``. ``FORMAT_OPTIONS``
    (the package's registry) maps a format's name to this class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def build(self, bits: int, signed: bool, granularity: Any) -> NumberFormat:
        """The format for a tensor of ``bits`` bits, signed or not, at ``granularity``."""
        raise NotImplementedError

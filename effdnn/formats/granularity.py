"""Granularity: which elements share one set of quantization parameters, through ONE primitive.

Every format quantizes a 2-D *block view* ``(G, N)`` of its tensor: row ``g`` holds the ``N`` elements
that share parameters ``params[g]``. ``Granularity.to_blocks`` / ``from_blocks`` map a tensor to that
view and back, so per-tensor, per-channel and per-group quantization are one code path (the torchao
``granularity.py`` idea: granularity as a small frozen dataclass mapped to a block shape).

- ``per_tensor``: G = 1.
- ``per_channel``: G = size of ``axis`` (axis 0 = output channels of a Conv / Linear weight;
  axis 1 = channels of an activation ``(B, C, ...)``).
- ``per_group``: the channel axis moved to the front and the rest flattened, ``(C, K)``, then split
  into groups of ``group_size`` consecutive elements: G = C * K / group_size (GPTQ / AWQ style groups
  along the input dimension of a weight).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import EffdnnError

Kind = Literal["per_tensor", "per_channel", "per_group"]
KINDS = ("per_tensor", "per_channel", "per_group")


@dataclass(frozen=True)
class Granularity:
    kind: Kind = "per_tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EffdnnError(f"granularity: unknown {self.kind!r} (known: {', '.join(KINDS)})")
        if self.kind == "per_group" and (self.group_size is None or self.group_size < 1):
            raise EffdnnError("granularity: per_group needs group_size >= 1")
        if self.kind != "per_group" and self.group_size is not None:
            raise EffdnnError(f"granularity: group_size is only for per_group, not {self.kind}")

    @classmethod
    def of(cls, spec: "Granularity | str | None", axis: int = 0, group_size: int | None = None) -> "Granularity":
        if isinstance(spec, Granularity):
            return spec
        return cls(spec or "per_tensor", axis, group_size if spec == "per_group" else None)

    def num_blocks(self, shape: torch.Size | tuple[int, ...]) -> int:
        if self.kind == "per_tensor":
            return 1
        c = shape[self.axis]
        if self.kind == "per_channel":
            return c
        rest = int(torch.tensor(shape).prod()) // c
        if rest % self.group_size:  # type: ignore[operator]
            raise EffdnnError(f"granularity: group_size {self.group_size} does not divide the {rest} elements per channel")
        return c * rest // self.group_size  # type: ignore[operator]

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` -> its ``(G, N)`` block view (a copy only when moving the axis needs one)."""
        if self.kind == "per_tensor":
            return x.reshape(1, -1)
        if x.dim() == 0 or not -x.dim() <= self.axis < x.dim():
            raise EffdnnError(f"granularity: axis {self.axis} out of range for a tensor of shape {tuple(x.shape)}")
        g = self.num_blocks(x.shape)
        return x.movedim(self.axis, 0).reshape(g, -1)

    def from_blocks(self, blocks: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_blocks` for a tensor of ``shape``."""
        if self.kind == "per_tensor":
            return blocks.reshape(shape)
        moved = (shape[self.axis], *[s for i, s in enumerate(shape) if i != self.axis % len(shape)])
        return blocks.reshape(moved).movedim(0, self.axis)

    def __str__(self) -> str:
        return self.kind if self.kind != "per_group" else f"per_group({self.group_size})"


PER_TENSOR = Granularity()

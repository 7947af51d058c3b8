"""The energy table: one documented, replaceable place.

Numbers are Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm,
0.9 V, in picojoules. Widths not in the table are scaled from the nearest entry of the same kind by
the rule that an adder costs O(bits) and a multiplier O(bits^2) (an a x b multiplier: O(a * b)).
Memory is charged per 64-bit read at the smallest level that holds the data.

Replace it with ``EnergyTable.from_file("table.yaml")`` (same field names) or by constructing one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError

from ..errors import EffdnnError
from ..registry import StrictModel, format_validation_error

Kind = Literal["int", "float"]


@dataclass(frozen=True)
class EnergyTable:
    int_add: dict[int, float] = field(default_factory=lambda: {8: 0.03, 32: 0.1})
    int_mult: dict[int, float] = field(default_factory=lambda: {8: 0.2, 32: 3.1})
    float_add: dict[int, float] = field(default_factory=lambda: {16: 0.4, 32: 0.9})
    float_mult: dict[int, float] = field(default_factory=lambda: {16: 1.1, 32: 3.7})
    # 64-bit read energy by memory capacity in bytes (SRAM 8 KB, 32 KB, 1 MB); beyond: DRAM.
    sram_read_64b: dict[int, float] = field(default_factory=lambda: {8 * 1024: 10.0, 32 * 1024: 20.0, 1 << 20: 100.0})
    dram_read_64b: float = 1950.0  # Horowitz gives 1.3-2.6 nJ; the middle of that range
    source: str = "Horowitz, ISSCC 2014, 45 nm"

    def __post_init__(self) -> None:
        for f in ("int_add", "int_mult", "float_add", "float_mult", "sram_read_64b"):
            table = getattr(self, f)
            if not table or any(int(k) <= 0 or not 0 <= float(v) < math.inf for k, v in table.items()):
                raise EffdnnError(f"energy table: {f} needs positive widths and finite, non-negative energies")
        if not 0 <= self.dram_read_64b < math.inf:
            raise EffdnnError("energy table: dram_read_64b must be finite and >= 0")

    @staticmethod
    def _nearest(table: dict[int, float], bits: float) -> tuple[int, float]:
        anchor = min(table, key=lambda b: (abs(b - bits), b))
        return anchor, table[anchor]

    def add(self, kind: Kind, bits: float) -> float:
        """pJ of one addition of ``bits``-wide operands (adder ~ O(bits))."""
        anchor, e = self._nearest(self.int_add if kind == "int" else self.float_add, bits)
        return e * bits / anchor

    def mult(self, kind: Kind, a_bits: float, b_bits: float) -> float:
        """pJ of one a x b multiplication (multiplier ~ O(a * b)); anchored at the width max(a, b)."""
        anchor, e = self._nearest(self.int_mult if kind == "int" else self.float_mult, max(a_bits, b_bits))
        return e * a_bits * b_bits / anchor**2

    def read_64b(self, capacity_bytes: float) -> float:
        """pJ of one 64-bit read from the smallest memory that holds ``capacity_bytes``."""
        for size in sorted(self.sram_read_64b):
            if capacity_bytes <= size:
                return self.sram_read_64b[size]
        return self.dram_read_64b

    def access(self, nbytes: float, capacity_bytes: float) -> float:
        """pJ to move ``nbytes`` through a memory of the level that holds ``capacity_bytes``."""
        return nbytes / 8.0 * self.read_64b(capacity_bytes)

    @classmethod
    def from_file(cls, path: str | Path) -> "EnergyTable":
        """A table from a YAML or JSON file with this class's field names (each optional)."""
        path = Path(path)
        try:
            data: Any = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
            raise EffdnnError(f"energy table {path}: unreadable ({' '.join(str(e).split())})") from None
        try:
            spec = _EnergyFile.model_validate(data if data is not None else {})
        except ValidationError as e:
            raise EffdnnError(f"energy table {path}: {format_validation_error(e)}") from None
        return cls(**spec.model_dump(exclude_none=True))


Energy = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _EnergyFile(StrictModel):
    """What an energy-table file may hold: per-width tables {bits: pJ}, the DRAM read, a source line."""

    int_add: dict[PositiveInt, Energy] | None = Field(None, min_length=1)
    int_mult: dict[PositiveInt, Energy] | None = Field(None, min_length=1)
    float_add: dict[PositiveInt, Energy] | None = Field(None, min_length=1)
    float_mult: dict[PositiveInt, Energy] | None = Field(None, min_length=1)
    sram_read_64b: dict[PositiveInt, Energy] | None = Field(None, min_length=1)
    dram_read_64b: Energy | None = None
    source: str | None = None


DEFAULT_TABLE = EnergyTable()

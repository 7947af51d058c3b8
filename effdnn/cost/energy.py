"""The energy table: one documented, replaceable place.

Numbers are Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm,
0.9 V, in picojoules. Widths not in the table are scaled from the nearest entry of the same kind by
the rule that an adder costs O(bits) and a multiplier O(bits^2) (an a x b multiplier: O(a * b)).
Memory is charged per 64-bit read at the smallest level that holds the data.

Replace it with ``EnergyTable.from_file("table.yaml")`` (same field names) or by constructing one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import EffdnnError

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
            if not table or any(int(k) <= 0 or float(v) < 0 for k, v in table.items()):
                raise EffdnnError(f"energy table: {f} needs positive widths and non-negative energies")
        if self.dram_read_64b < 0:
            raise EffdnnError("energy table: dram_read_64b must be >= 0")

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
        path = Path(path)
        try:
            data: Any = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
            raise EffdnnError(f"energy table {path}: unreadable ({e})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise EffdnnError(f"energy table {path}: unknown keys {sorted(set(data) - names) if isinstance(data, dict) else data}")
        conv = {k: ({int(a): float(b) for a, b in v.items()} if isinstance(v, dict) else v) for k, v in data.items()}
        return cls(**conv)


DEFAULT_TABLE = EnergyTable()

"""CostReport: per-layer and total parameters, storage, MACs, bit-operations, energy and sparsity."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerCost:
    name: str
    type: str
    params: int
    storage_bytes: float
    weight_bits: float
    act_bits: float
    precision: str
    macs: int  # dense MACs per example
    effective_macs: float  # MACs left after skipping zero weights / activations
    bitops: float  # effective MACs x weight bits x activation bits
    energy_pj: float  # compute + memory, per example
    compute_energy_pj: float
    memory_energy_pj: float
    weight_sparsity: float
    activation_sparsity: float


@dataclass
class CostReport:
    layers: list[LayerCost] = field(default_factory=list)
    params: int = 0
    size_bytes: float = 0.0
    fp32_size_bytes: float = 0.0
    macs: int = 0
    effective_macs: float = 0.0
    bitops: float = 0.0
    energy_pj: float = 0.0
    compute_energy_pj: float = 0.0
    memory_energy_pj: float = 0.0
    weight_sparsity: float = 0.0
    activation_sparsity: float = 0.0
    energy_table: str = ""

    @property
    def compression_ratio(self) -> float:
        return self.fp32_size_bytes / self.size_bytes if self.size_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compression_ratio"] = self.compression_ratio
        return d

    def summary(self) -> dict[str, Any]:
        """The totals that go into report.json, without the per-layer rows."""
        d = self.to_dict()
        d.pop("layers")
        return d

    def table(self) -> str:
        """A plain-text per-layer table (what ``effdnn cost`` and the examples print)."""
        head = f"{'layer':<28}{'type':<12}{'params':>9}{'bytes':>10}{'w/a bits':>10}{'MACs':>11}{'bit-ops':>13}{'energy pJ':>12}{'w.sp':>6}{'a.sp':>6}"
        rows = [head, "-" * len(head)]
        for l in self.layers:
            rows.append(f"{l.name[:27]:<28}{l.type[:11]:<12}{l.params:>9}{l.storage_bytes:>10.0f}{f'{l.weight_bits:g}/{l.act_bits:g}':>10}"
                        f"{l.macs:>11}{l.bitops:>13.3g}{l.energy_pj:>12.4g}{l.weight_sparsity:>6.2f}{l.activation_sparsity:>6.2f}")
        rows.append("-" * len(head))
        rows.append(f"{'total':<40}{self.params:>9}{self.size_bytes:>10.0f}{'':>10}{self.macs:>11}{self.bitops:>13.3g}"
                    f"{self.energy_pj:>12.4g}{self.weight_sparsity:>6.2f}{self.activation_sparsity:>6.2f}")
        return "\n".join(rows)

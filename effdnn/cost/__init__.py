"""Hardware cost model: parameters, storage bytes, MACs, bit-operations and energy per example.

Rules (also in the README's cost-model section):
- MACs are counted on one traced forward pass (``counter``); every figure is per example.
- Zeros skip work: an op's effective MACs = MACs x (1 - weight zeros) x (1 - activation zeros), the
  zero-skipping of sparse accelerators (EIE, Cnvlutin); ``skip_zeros=False`` charges dense MACs.
- bit-ops = effective MACs x weight bits x activation bits.
- One row per module that owns weights: each op-bearing module (a Linear, a conv, an attention core),
  and each module whose weights take part in no MAC (an embedding table, a LayerNorm, a BatchNorm);
  every parameter and stored byte is in exactly one row (the deepest that holds it), so the rows add
  up to the totals.
- Energy = effective MACs x (multiply + accumulate at the layer's widths, ``EnergyTable``)
  + the deployed weights read once per example from the smallest memory that holds the model
  + each op's input and output activations moved once, from the memory that holds the largest.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import batch_input
from .counter import OpRecord, trace_ops
from .energy import DEFAULT_TABLE, EnergyTable
from .precision import LayerPrecision, deployed_bits, own_tensors, precision_of, storage_bits
from .report import CostReport, LayerCost


def _batch_size(x: Any) -> int:
    """The example batch's size (> 0), or one line saying what is wrong with it."""
    sizes = [int(x.shape[0])] if isinstance(x, torch.Tensor) and x.dim() > 0 else \
        [int(v.shape[0]) for v in x.values() if isinstance(v, torch.Tensor) and v.dim() > 0] if isinstance(x, dict) else []
    if not sizes:
        raise EffdnnError(f"cost: example_input must be a batch tensor, an (input, ...) tuple or a dict of tensors, "
                          f"got {type(x).__name__}")
    if sizes[0] == 0:
        raise EffdnnError("cost: example_input holds 0 examples")
    return sizes[0]


def fp32_bytes(model: nn.Module) -> float:
    """Size of every parameter and inference buffer of ``model`` stored as float32."""
    return sum(t.numel() * 4 for m in model.modules() for _, t in own_tensors(m))


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _owner(name: str, rows: list[str]) -> str | None:
    """The deepest row whose module holds ``name`` (a module or parameter path), or None."""
    best = None
    for r in rows:
        if _under(name, r) and (best is None or len(r) > len(best)):
            best = r
    return best


def assign_storage(model: nn.Module, units: dict[str, int], rows: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(parameters, deployed bits) of each row, every parameter and storage unit counted once: in the
    deepest row that holds it. Units no row holds (embeddings, LayerNorms, BatchNorms: modules without
    MACs) become rows of their own, keyed by their module's name."""
    params: dict[str, int] = defaultdict(int)
    bits: dict[str, int] = defaultdict(int)
    for unit, b in units.items():
        if b:
            bits[_owner(unit, rows) or unit] += b
    for pname, p in model.named_parameters():
        module = pname.rpartition(".")[0]
        params[_owner(module, rows) or _owner(module, list(bits)) or module] += p.numel()
    return dict(params), dict(bits)


def _storage_row(name: str, mod: nn.Module, params: int, nbytes: float, read_pj: float) -> LayerCost:
    """A row for weights that take part in no multiply-accumulate (an embedding table, a LayerNorm)."""
    p = precision_of(mod)
    return LayerCost(name=name or "<model>", type=type(mod).__name__, params=params, storage_bytes=nbytes,
                     weight_bits=p.weight_bits, act_bits=p.act_bits, precision=p.label or f"{p.weight_kind}{p.weight_bits:g}",
                     macs=0, effective_macs=0.0, bitops=0.0, energy_pj=nbytes * read_pj, compute_energy_pj=0.0,
                     memory_energy_pj=nbytes * read_pj, weight_sparsity=0.0, activation_sparsity=0.0)


def cost(model: nn.Module, example_input: Any, table: EnergyTable | None = None, skip_zeros: bool = True) -> CostReport:
    """Cost of ``model`` per example, measured on ``example_input`` (a batch tensor, batch tuple or dict)."""
    table = table or DEFAULT_TABLE
    x = batch_input(example_input) if isinstance(example_input, (tuple, list)) else example_input
    batch = _batch_size(x)
    for m in model.modules():  # pruned layers: weights consistent with their masks (a user's loop may have
        hold = getattr(m, "hold_mask", None)  # stepped since the last forward) before zeros are counted
        if callable(hold):
            hold()
    records = trace_ops(model, x)
    modules = dict(model.named_modules())
    units = deployed_bits(model)
    size_bytes = sum(units.values()) / 8
    weight_read_pj_per_byte = table.access(1.0, size_bytes)
    act_peak_bytes = max(((r.in_numel + r.out_numel) / batch * 4 for r in records), default=0.0)

    by_module: dict[str, list[OpRecord]] = defaultdict(list)
    for r in records:
        by_module[r.module].append(r)
    row_params, row_bits = assign_storage(model, units, list(by_module))

    layers: list[LayerCost] = []
    for name, ops in by_module.items():
        mod = modules[name]
        p: LayerPrecision = precision_of(mod)
        (ba, bb), (acc_kind, acc_bits) = p.compute_bits, p.accumulator
        per_mac = table.mult(p.compute_kind, ba, bb) + table.add(acc_kind, acc_bits)
        macs = sum(r.macs for r in ops) / batch
        keep = [(1 - r.weight_zero) * (1 - r.input_zero) if skip_zeros else 1.0 for r in ops]
        eff = sum(r.macs * k for r, k in zip(ops, keep)) / batch
        layer_bytes = row_bits.get(name, 0) / 8
        act_bytes = sum(r.in_numel + r.out_numel for r in ops) / batch * p.act_bits / 8
        memory = layer_bytes * weight_read_pj_per_byte + table.access(act_bytes, act_peak_bytes * p.act_bits / 32)
        compute = eff * per_mac
        wn = sum(r.weight_numel for r in ops)
        layers.append(LayerCost(
            name=name or "<model>", type=type(mod).__name__,
            params=row_params.get(name, 0),
            storage_bytes=layer_bytes, weight_bits=p.weight_bits, act_bits=p.act_bits,
            precision=p.label or f"{p.weight_kind}{p.weight_bits:g}/{p.act_kind}{p.act_bits:g}",
            macs=int(round(macs)), effective_macs=eff, bitops=eff * p.weight_bits * p.act_bits,
            energy_pj=compute + memory, compute_energy_pj=compute, memory_energy_pj=memory,
            weight_sparsity=sum(r.weight_zero * r.weight_numel for r in ops) / wn if wn else 0.0,
            activation_sparsity=sum(r.input_zero * r.macs for r in ops) / max(sum(r.macs for r in ops), 1),
        ))

    layers += [_storage_row(n, modules[n], row_params.get(n, 0), b / 8, weight_read_pj_per_byte)
               for n, b in row_bits.items() if n not in by_module]
    other_memory = 0.0  # every stored tensor has its row
    wn_total = sum(r.weight_numel for r in records)
    all_macs = sum(r.macs for r in records)
    return CostReport(
        layers=layers,
        params=sum(t.numel() for t in model.parameters()),
        size_bytes=size_bytes,
        fp32_size_bytes=fp32_bytes(model),
        macs=int(round(all_macs / batch)),
        effective_macs=sum(l.effective_macs for l in layers),
        bitops=sum(l.bitops for l in layers),
        energy_pj=sum(l.energy_pj for l in layers) + other_memory,
        compute_energy_pj=sum(l.compute_energy_pj for l in layers),
        memory_energy_pj=sum(l.memory_energy_pj for l in layers) + other_memory,
        weight_sparsity=sum(r.weight_zero * r.weight_numel for r in records) / wn_total if wn_total else 0.0,
        activation_sparsity=sum(r.input_zero * r.macs for r in records) / all_macs if all_macs else 0.0,
        energy_table=table.source,
    )


__all__ = ["CostReport", "EnergyTable", "DEFAULT_TABLE", "LayerCost", "LayerPrecision", "cost", "deployed_bits",
           "fp32_bytes", "precision_of", "storage_bits", "trace_ops"]

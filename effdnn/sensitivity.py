"""Per-layer sensitivity sweep and a mixed bit-width choice under a size budget.

``sweep``: for every quantizable layer and every width, quantize that layer alone (weights and, if
``act``, its input, with PTQ: max-calibrated, per-channel weights) and record the accuracy loss against
the float model. ``pick_widths``: start from the widest width everywhere and repeatedly narrow the
layer whose next step down costs the least accuracy per weight bit saved, until the weights fit
``budget_bits``; the result is the ``overrides`` block of a ``qat`` / ``lsq`` / ``pact`` / ``ptq`` recipe
(the HAQ / HAWQ question answered greedily with measured, not estimated, per-layer losses).

``evaluate`` is any ``model -> accuracy`` function.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from .errors import EffdnnError
from .models.layers import Add
from .quant.modules import quantizable


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the sweep quantizes one at a time (every Conv / Linear with a quantized class)."""
    return [(n, m) for n, m in model.named_modules() if quantizable(m) and not isinstance(m, Add)]


def sweep(model: nn.Module, evaluate: Callable[[nn.Module], float], calib_data: Iterable[Any],
          widths: Iterable[int] = (8, 4, 3, 2), act: bool = True) -> list[dict[str, Any]]:
    """Rows {layer, bits, params, accuracy, loss_pts} (loss in accuracy points vs the float model)."""
    from . import quantize  # the public API (registry dispatch)

    calib = list(calib_data)
    if not calib:
        raise EffdnnError("sensitivity: the calibration set is empty")
    base = evaluate(model)
    names = [n for n, _ in quantizable_layers(model)]
    rows = []
    for name, layer in quantizable_layers(model):
        for bits in widths:
            spec = {"method": "ptq", "weight": {"bits": bits, "granularity": "per_channel"},
                    "act": {"bits": bits} if act else None, "quantize_add": False,
                    "keep_fp": [n for n in names if n != name], "depthwise": "quantize"}  # this width, even depthwise
            acc = evaluate(quantize(model, spec, calib))
            rows.append({"layer": name, "bits": bits, "params": layer.weight.numel(), "accuracy": acc,
                         "loss_pts": (base - acc) * 100})
    return rows


def pick_widths(rows: list[dict[str, Any]], budget_bits: float) -> dict[str, int]:
    """Greedy mixed widths: {layer: bits} whose weights total <= ``budget_bits`` (EffdnnError if even
    the narrowest widths do not fit)."""
    by_layer: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {})[r["bits"]] = r
    choice = {n: max(w) for n, w in by_layer.items()}

    def size() -> float:
        return sum(by_layer[n][b]["params"] * b for n, b in choice.items())

    while size() > budget_bits:
        best, best_cost = None, float("inf")
        for n, b in choice.items():
            lower = [w for w in by_layer[n] if w < b]
            if not lower:
                continue
            nb = max(lower)
            saved = by_layer[n][b]["params"] * (b - nb)
            cost = (by_layer[n][nb]["loss_pts"] - by_layer[n][b]["loss_pts"]) / saved
            if cost < best_cost:
                best, best_cost = (n, nb), cost
        if best is None:
            raise EffdnnError(f"sensitivity: {budget_bits:.0f} bits is below the narrowest configuration ({size():.0f})")
        choice[best[0]] = best[1]
    return choice


def as_overrides(choice: dict[str, int], act: bool = True) -> dict[str, dict[str, Any]]:
    """The recipe ``overrides`` block of a width choice (weights only when the sweep left inputs float)."""
    return {n: {"weight": {"bits": b}, **({"act": {"bits": b}} if act else {})} for n, b in choice.items()}

"""effdnn: make deep neural networks cheaper, and measure what each technique saves.

Public API (see DESIGN.md, "Public contract"):
    run(recipe) -> report dict
    quantize(model, spec, calib_data=None) -> model
    prune(model, spec, data=None) -> model
    cost(model, example_input) -> CostReport
    export_onnx(model, example_input, path) -> path
    optimize_for_inference(model) -> model (the same function, faster CPU ops)
"""
from __future__ import annotations

__version__ = "0.1.0"

from typing import Any, Iterable

from torch import nn

from . import techniques  # noqa: F401  (registers every method)
from .context import ExperimentContext
from .cost import CostReport, EnergyTable
from .cost import cost as _cost
from .errors import EffdnnError, NotAvailableYet
from .export import export_onnx, optimize_for_inference
from .registry import ACTIVATION_SPARSITY, COMPRESS, PRECISION, PRUNE, QUANTIZE, REGISTRIES
from .runner import run
from .utils.batches import model_device


def _apply(registry: Any, model: nn.Module, spec: Any, calib_data: Iterable[Any] | None) -> nn.Module:
    ctx = ExperimentContext(data=None, device=model_device(model), calib_data=calib_data)
    config = registry.parse(spec)
    model = registry.method_of(config).transform(model, config, ctx)
    return model


def quantize(model: nn.Module, spec: Any, calib_data: Iterable[Any] | None = None) -> nn.Module:
    """Quantize ``model`` as the ``quantize`` block ``spec`` (a dict or config object) says.

    ``calib_data``: any iterable of batches (tensors, (input, label) tuples, or dicts of kwargs)."""
    return _apply(QUANTIZE, model, spec, calib_data)


def prune(model: nn.Module, spec: Any, data: Iterable[Any] | None = None) -> nn.Module:
    """Prune ``model`` as the ``prune`` block ``spec`` says; ``data`` feeds data-driven saliencies."""
    return _apply(PRUNE, model, spec, data)


def cost(model: nn.Module, example_input: Any, table: EnergyTable | None = None, skip_zeros: bool = True) -> CostReport:
    """Per-layer and total parameters, bytes, MACs, bit-ops and energy of ``model`` per example."""
    return _cost(model, example_input, table=table, skip_zeros=skip_zeros)


__all__ = ["ACTIVATION_SPARSITY", "COMPRESS", "CostReport", "EffdnnError", "EnergyTable", "ExperimentContext",
           "NotAvailableYet", "PRECISION", "PRUNE", "QUANTIZE", "REGISTRIES", "cost", "export_onnx", "optimize_for_inference", "prune",
           "quantize", "run"]

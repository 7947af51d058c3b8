"""effdnn: make deep neural networks cheaper, and measure what each technique saves.

Public API (see DESIGN.md, "Public contract"):
    run(recipe) -> report dict
    quantize(model, spec, calib_data=None) -> a quantized copy (report: model.effdnn_report)
    prune(model, spec, data=None) -> a pruned copy (report: model.effdnn_report)
    convert_qat(model) -> model (a QAT-trained model's static quantized form, in place)
    Experiment(model, experiment_dict, data=None, steps_per_epoch=None): one recipe experiment that
        effdnn's ``fit()`` or your own loop drives (attach / epoch / loss / backward / step / finish)
    cost(model, example_input) -> CostReport
    export_onnx(model, example_input, path) -> path
    optimize_for_inference(model) -> model (the same function, faster CPU ops)
    deploy(model, example, engine="auto", data=None) -> Deployment (the model on the fastest CPU engine
        measured: torch, onnxruntime, effdnn's int8 engine; says which and why)
"""
from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from torch import nn

from . import techniques  # noqa: F401  (registers every method)
from .api import Experiment, check_model, prune, quantize
from .context import ExperimentContext
from .cost import CostReport, EnergyTable
from .cost import cost as _cost
from .errors import EffdnnError, NotAvailableYet
from .export import Deployment, deploy, export_onnx, optimize_for_inference
from .quant.qat import convert_qat
from .registry import ACTIVATION_SPARSITY, COMPRESS, PRECISION, PRUNE, QUANTIZE, REGISTRIES
from .runner import run


def cost(model: nn.Module, example_input: Any, table: EnergyTable | None = None, skip_zeros: bool = True) -> CostReport:
    """Per-layer and total parameters, bytes, MACs, bit-ops and energy of ``model`` per example."""
    check_model(model, "effdnn.cost")
    return _cost(model, example_input, table=table, skip_zeros=skip_zeros)


__all__ = ["ACTIVATION_SPARSITY", "COMPRESS", "CostReport", "Deployment", "EffdnnError", "EnergyTable", "Experiment",
           "ExperimentContext", "NotAvailableYet", "PRECISION", "PRUNE", "QUANTIZE", "REGISTRIES", "convert_qat", "cost",
           "deploy", "export_onnx", "optimize_for_inference", "prune", "quantize", "run"]

"""How an example input becomes the ONNX graph's named inputs, outputs and dynamic axes.

``export_onnx`` takes the batch convention of the rest of the API, and Hugging Face models' keyword
inputs:

* a tensor: one input named ``input``; its batch axis is dynamic, and for an integer tensor of two or
  more dimensions (token ids) axis 1 too (``sequence``);
* a dict of keyword inputs (``model(**batch)``): one graph input per key, in the dict's order, each with a
  dynamic batch axis and, for every input of two or more dimensions whose axis 1 is an integer input's
  sequence length (ids, attention masks, token types, ``inputs_embeds``), a dynamic sequence axis;
* a tuple / list: every item is a positional argument when ``forward`` takes that many (a
  ``(input_ids, attention_mask)`` pair), else it is an ``(input, label...)`` batch and its first item is
  the input.

The model is wrapped so the exporter sees positional tensors only (a dict handed to the exporter becomes
keyword arguments that collide with a Hugging Face model's own, "got multiple values for argument
'use_cache'") and so a ``ModelOutput`` / dict / tuple output becomes the graph's named outputs (its
tensor items, named by their keys).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import batch_input, check_keys


@dataclass
class ExportInputs:
    args: tuple[torch.Tensor, ...]
    names: list[str]
    keyword: bool  # the names are forward's keyword arguments (else positional)
    dynamic_axes: dict[str, dict[int, str]]


def _positional_params(model: nn.Module) -> int:
    """How many positional arguments ``model.forward`` takes (a large number for ``*args``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 1 << 30
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _param_names(model: nn.Module, n: int) -> list[str]:
    try:
        names = [p.name for p in inspect.signature(model.forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"input_{i}" for i in range(n)]


def _is_tokens(t: torch.Tensor) -> bool:
    return t.dim() >= 2 and not t.is_floating_point() and not t.is_complex()


def _axes(names: list[str], tensors: list[torch.Tensor]) -> dict[str, dict[int, str]]:
    """Batch axis of every input; axis 1 of token-like inputs and of inputs sharing their length."""
    seq = {int(t.shape[1]) for t in tensors if _is_tokens(t)}
    out = {}
    for n, t in zip(names, tensors):
        axes = {0: "batch"} if t.dim() >= 1 else {}
        if t.dim() >= 2 and (_is_tokens(t) or int(t.shape[1]) in seq):
            axes[1] = "sequence"
        out[n] = axes
    return out


def export_inputs(model: nn.Module, example: Any) -> ExportInputs:
    """The graph inputs of ``example`` (see the module doc), or one line saying what is wrong."""
    if isinstance(example, dict):
        check_keys(model, example, "export_onnx: example_input")
        bad = [k for k, v in example.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise EffdnnError(f"export_onnx: example_input[{bad[0]!r}] must be a tensor, got {type(example[bad[0]]).__name__}")
        names, tensors = list(example), list(example.values())
        return ExportInputs(tuple(tensors), names, True, _axes(names, tensors))
    if isinstance(example, (tuple, list)) and len(example) > 1 and _positional_params(model) >= len(example) \
            and all(isinstance(v, torch.Tensor) for v in example):
        names = _param_names(model, len(example))
        return ExportInputs(tuple(example), names, False, _axes(names, list(example)))
    x = batch_input(example) if isinstance(example, (tuple, list)) else example
    if isinstance(x, dict):
        return export_inputs(model, x)
    if not isinstance(x, torch.Tensor):
        raise EffdnnError(f"export_onnx: example_input must be a tensor, a tuple of tensors or a dict of tensors, "
                          f"got {type(x).__name__}")
    return ExportInputs((x,), ["input"], False, _axes(["input"], [x]))


def _tensors(out: Any) -> list[tuple[str, torch.Tensor]]:
    """The named tensor items of a model's output (a tensor, a dict / ModelOutput, a tuple)."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    return []


class ExportWrapper(nn.Module):
    """``model`` called with positional tensors as its keyword (or positional) inputs; returns the
    output's tensor items as a flat tuple."""

    def __init__(self, model: nn.Module, inputs: ExportInputs) -> None:
        super().__init__()
        self.model, self.names, self.keyword = model, inputs.names, inputs.keyword

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, args))) if self.keyword else self.model(*args)
        return tuple(t for _, t in _tensors(out))


@torch.no_grad()
def output_names(model: nn.Module, inputs: ExportInputs) -> list[str]:
    """Names of the graph outputs, from one forward pass (``output`` for a single tensor)."""
    out = model(**dict(zip(inputs.names, inputs.args))) if inputs.keyword else model(*inputs.args)
    named = _tensors(out)
    if not named:
        raise EffdnnError(f"export_onnx: the model returns {type(out).__name__}, with no tensor to export")
    return [n for n, _ in named]

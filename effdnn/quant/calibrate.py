"""One calibration driver for every model: run N batches through a model whose quantizers observe,
then let every quantizer solve its params."""
from __future__ import annotations

import sys
from typing import Any, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import EffdnnError
from ..utils.batches import forward, iter_inputs, model_device
from .fake_quant import Quantizer
from .stats import check_batch_keys


@torch.no_grad()  # not inference_mode: params made from observer statistics must stay usable by autograd
def calibrate(model: nn.Module, data: Iterable[Any], max_batches: int | None = None) -> int:
    """Feed up to ``max_batches`` batches of ``data`` to ``model`` (eval mode), then finish every
    observing ``Quantizer``. Returns the number of batches seen; an empty set is an EffdnnError."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    # channels-last convolutions: ~1.8x faster forward passes on the CPU (ResNet-20, LeNet-5); the
    # observers read the activations in memory order, so the layout costs no copy there
    nhwc = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if nhwc:
        model.to(memory_format=torch.channels_last)
    seen, first = 0, None
    try:
        for x in iter_inputs(data, max_batches, device):
            first = x if first is None else first
            if nhwc and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            check_batch_keys(model, x, "calibration")
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 0:
                raise EffdnnError(f"calibration: batch {seen + 1} holds 0 examples")
            try:
                forward(model, x)
            except EffdnnError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise EffdnnError(f"calibration: the model's forward fails on calibration batch {seen + 1} "
                                  f"({_describe(x)}): {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
            seen += 1
    finally:
        model.train(was_training)
        if nhwc:
            model.to(memory_format=torch.contiguous_format)
    if seen == 0:
        raise EffdnnError("calibration: the calibration set is empty (no batches)")
    _functional_weights(model, first)
    _unreached_layers(model)
    observing = [q for q in model.modules() if isinstance(q, Quantizer) and q.mode == "observe"]
    for q in observing:
        if q.observer is not None and q.observer.count == 0:
            raise EffdnnError(f"calibration: {q.observer.name} was never reached by the calibration data")
    _warn_degenerate(observing)
    for q in observing:
        q.finish_calibration()
    return seen


class _ArgRecorder(TorchFunctionMode):
    """Records the id of every tensor passed directly to a torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ids.update(id(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return func(*args, **kwargs)


@torch.no_grad()
def _functional_weights(model: nn.Module, x: Any) -> None:
    """Layers whose forward never ran but whose weight a functional op consumed (torchvision's Swin:
    ``F.linear(x, self.qkv.weight)``): their weight is quantized in place (so every use of it computes
    with the quantized weight) and their input stays float, with one warning line naming them."""
    unreached = [m for m in model.modules() if isinstance(getattr(m, "input_quant", None), Quantizer)
                 and m.input_quant.mode == "observe" and m.input_quant.observer is not None
                 and m.input_quant.observer.count == 0 and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not unreached or x is None:
        return
    was_training = model.training
    model.eval()
    rec = _ArgRecorder()
    try:
        with rec:
            forward(model, x)
    finally:
        model.train(was_training)
    names = []
    for m in unreached:
        if id(m.weight) in rec.ids and callable(getattr(m, "quantize_weight_in_place", None)):
            m.quantize_weight_in_place()
            names.append(m.qname)
    if names:
        more = f" (and {len(names) - 1} more layers)" if len(names) > 1 else ""
        print(f"effdnn: warning: calibration: {names[0]}{more}: weight used by a functional op outside the layer's "
              "forward: weight quantized in place, input left in float", file=sys.stderr)


def _unreached_layers(model: nn.Module) -> None:
    """Layers the model's forward never ran on any calibration batch (off its eval path: GoogLeNet's and
    Inception's auxiliary classifiers): nothing calibrates their input, so it stays float (their weight
    is quantized), with one warning line naming them. A model none of whose layers ran is an error."""
    layers = [m for m in model.modules() if isinstance(getattr(m, "input_quant", None), Quantizer)
              and m.input_quant.mode == "observe" and m.input_quant.observer is not None]
    unreached = [m for m in layers if m.input_quant.observer.count == 0]
    if not unreached or len(unreached) == len(layers):
        return  # every layer reached, or none (the caller's error names the first)
    for m in unreached:
        m.input_quant = None
        m.out_observer = None
        m.never_reached = True
    names = [getattr(m, "qname", type(m).__name__) for m in unreached]
    more = f" (and {len(names) - 1} more layers)" if len(names) > 1 else ""
    print(f"effdnn: warning: calibration: {names[0]}{more} never reached by the calibration data (off the model's "
          "eval path): weight quantized, input left in float", file=sys.stderr)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"input {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    if isinstance(x, dict):
        return "inputs " + ", ".join(f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                                     for k, v in x.items())
    return f"input of type {type(x).__name__}"


def _warn_degenerate(observing: list[Quantizer]) -> None:
    """One warning line when calibrated tensors were constant zero on every batch (all-zero calibration
    data, a dead layer): their range is zero, so the quantized model outputs constants there."""
    zero = [o.name for q in observing if (o := q.observer) is not None and o.min is not None
            and float(o.max.abs().max()) == 0 and float(o.min.abs().max()) == 0]
    if zero:
        more = f" and {len(zero) - 1} more tensors were" if len(zero) > 1 else " was"
        print(f"effdnn: warning: calibration: {zero[0]}{more} zero on every calibration batch (all-zero data?): the quantized model outputs constants there",
              file=sys.stderr)

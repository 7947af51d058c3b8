"""The recipe's ``precision`` block (registry PRECISION, key ``train``): train a fresh model from scratch
under a reduced-precision policy and report what it cost.

    precision: {train: fp16, loss_scale: dynamic}      # Micikevicius et al. 2018
    precision: {train: bf16}
    precision: {train: fp8, accumulate: fp16, chunk: 64, rounding: stochastic}   # Wang et al. 2018
    precision: {train: hfp8}                            # Sun et al. 2019
    precision: {train: fp32}                            # the same from-scratch training in float32

The transform builds ``ctx.make_model()``, converts it, adds its training callbacks to ``ctx.callbacks``
and, when the experiment has no ``finetune`` block, trains it with the recipe's baseline settings
(with one, the runner trains it with those).

Composition (effdnn/composition.py states the rules a recipe is checked against): when an earlier
block changed the model (quantized layers, pruning masks, FATReLU thresholds), a fresh model would drop
that work, so the block trains the GIVEN model instead: QAT (or a binary method's training) in fp16 /
bf16 mixed precision, fine-tuning of a pruned model with its masks. Quantized and pruned layers keep
their own classes, so mixed precision runs there through ``torch.autocast`` + GradScaler (the native
path, on the CPU too; fake quantization itself computes in float32), and the autocast hooks are removed
once training is done: the deployed model is what the other blocks make of it. fp8 / hfp8 replace the
GEMM layers with emulated FP8 layers and refuse quantized or pruned models. Report fields: loss-scale overflows (skipped steps),
final scale, error-gradient underflow counts, and the step time as a ratio to a float32 step of the
same model on the same batches, measured in the same run.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..transform import TransformContext
from ..formats.float import BF16, FP16, FP16_169
from ..registry import PRECISION, StrictModel
from ..hooks import Callback, step_with_callbacks
from ..utils.batches import batch_input, forward, move
from .fp8_native import convert_native_fp8, fp8_available
from .fp8_training import RoundWeightsCallback, fp8_policies
from .gemm import GemmPolicy, LowpStats, convert_layers, gemm_layers
from .mixed_precision import DynamicLossScaler, GradScalerCallback, LossScaleCallback, attach_autocast

Backend = Literal["auto", "emulate", "native"]


class _PrecisionConfig(StrictModel):
    loss_scale: Literal["dynamic", "none"] | float = "dynamic"
    init_scale: float = Field(2.0**16, gt=0)
    growth_interval: int = Field(2000, ge=1)
    backend: Backend = "auto"
    step_time_batches: int = Field(3, ge=0, description="batches timed for the step-time ratio to fp32 (0: skip)")


class FP32Config(_PrecisionConfig):
    train: Literal["fp32"] = "fp32"
    loss_scale: Literal["dynamic", "none"] | float = "none"


class FP16Config(_PrecisionConfig):
    train: Literal["fp16"] = "fp16"


class BF16Config(_PrecisionConfig):
    train: Literal["bf16"] = "bf16"
    loss_scale: Literal["dynamic", "none"] | float = "none"  # bf16 has float32's range


class FP8Config(_PrecisionConfig):
    train: Literal["fp8"] = "fp8"
    accumulate: Literal["fp16", "fp32"] = "fp16"
    chunk: int | None = Field(64, ge=0, description="chunk length CL; 0 or null: plain sequential accumulation")
    rounding: Literal["stochastic", "nearest"] = "stochastic"  # of the FP16 weight updates
    edge_layers: Literal["fp16", "fp8"] = "fp16"


class HFP8Config(FP8Config):
    train: Literal["hfp8"] = "hfp8"


def _scaler(config: _PrecisionConfig) -> DynamicLossScaler:
    ls = config.loss_scale
    if ls == "dynamic":
        return DynamicLossScaler(config.init_scale, growth_interval=config.growth_interval)
    return DynamicLossScaler(1.0 if ls == "none" else float(ls), dynamic=False)


def _native(config: _PrecisionConfig, device: torch.device, cpu_ok: bool = False) -> bool:
    """Whether to run on the hardware's own types: ``native`` always (fp8 needs CUDA; fp16 / bf16 autocast
    also runs on the CPU), ``auto`` on CUDA only, ``emulate`` never."""
    if config.backend == "native" and device.type != "cuda" and not (cpu_ok and device.type == "cpu"):
        raise EffdnnError(f"precision.backend: native {config.train} needs a CUDA device (this run uses {device})")
    return config.backend == "native" or (config.backend == "auto" and device.type == "cuda")


def _mixed(config: _PrecisionConfig, model: nn.Module, device: torch.device, stats: LowpStats) -> list[Callback]:
    fmt, dtype = (FP16, torch.float16) if config.train == "fp16" else (BF16, torch.bfloat16)
    if _native(config, device, cpu_ok=True):  # torch.autocast + GradScaler, on CUDA or on the CPU
        attach_autocast(model, device.type, dtype)
        return [GradScalerCallback(config.init_scale, config.growth_interval, enabled=config.loss_scale != "none",
                                   device=device.type)]
    policy = GemmPolicy(weight=fmt, act=fmt, grad=fmt, out=fmt, label=f"{fmt.name} mixed precision (fp32 accumulate)")
    convert_layers(model, lambda *_: policy, stats)
    return [LossScaleCallback(_scaler(config), stats)]


def _fp8(config: FP8Config, model: nn.Module, device: torch.device, stats: LowpStats) -> list[Callback]:
    extra: list[Callback] = []
    if _native(config, device):
        if not fp8_available(device):
            raise EffdnnError("precision.backend: native fp8 needs a GPU with fp8 tensor cores (compute capability >= 8.9)")
        layers = [n for n, _ in gemm_layers(model)]
        edges = {layers[0], layers[-1]} if config.edge_layers == "fp16" else set()
        convert_native_fp8(model, skip=edges)  # the edge layers stay emulated FP16
    acc = FP16_169 if config.accumulate == "fp16" else None
    policies = fp8_policies(config.train, acc, config.chunk or None, edge_fp16=config.edge_layers == "fp16")
    if gemm_layers(model):  # the layers not on native fp8
        convert_layers(model, policies, stats)
    extra.append(RoundWeightsCallback(FP16_169, config.rounding))
    return [LossScaleCallback(_scaler(config), stats), *extra]


PREPARE: dict[str, Callable[..., list[Callback]]] = {"fp16": _mixed, "bf16": _mixed, "fp8": _fp8, "hfp8": _fp8}


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Any, callbacks: list[Callback]) -> None:
    x, y = batch_input(batch), batch[1]
    loss = F.cross_entropy(forward(model, x), y)
    step_with_callbacks(loss, model, opt, callbacks)


def step_time(model: nn.Module, batches: list[Any], callbacks: list[Callback]) -> float:
    """Seconds per training step (forward, backward, update) of a throwaway copy, after one warm-up step."""
    model, callbacks = copy.deepcopy(model), copy.deepcopy(callbacks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for cb in callbacks:
        cb.on_fit_start(model, opt)
    cuda = next(model.parameters()).is_cuda
    _train_step(model, opt, batches[0], callbacks)  # warm-up: compiles the rounding kernels
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        _train_step(model, opt, b, callbacks)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(batches)


def transformed_by(model: nn.Module) -> str | None:
    """What an earlier block made of ``model`` that a fresh model would drop: 'quantized' (quantized
    layers), 'pruned' (pruning masks), 'activation-sparse' (FATReLU thresholds), or None."""
    found = None
    for m in model.modules():
        if getattr(m, "weight_quant", None) is not None or getattr(m, "input_quant", None) is not None:
            return "quantized"
        if isinstance(getattr(m, "weight_mask", None), torch.Tensor):
            found = "pruned"
        elif getattr(m, "effdnn_transform", None) == "activation-sparse" and found is None:
            found = "activation-sparse"
    return found


def _autocast_given(config: _PrecisionConfig, model: nn.Module, ctx: TransformContext, kind: str) -> list[Callback]:
    """fp16 / bf16 autocast + GradScaler on a quantized or pruned model (its layers keep their classes);
    a finalizer removes the autocast hooks after training."""
    if config.train not in ("fp16", "bf16", "fp32"):
        raise EffdnnError(f"precision: {config.train} training replaces the GEMM layers with emulated FP8 layers, "
                          f"which would drop the {kind} layers; use fp16 or bf16")
    if config.backend == "emulate":
        raise EffdnnError(f"precision.backend: emulate swaps in emulated GEMM layers, which would drop the {kind} "
                          "layers; use backend auto or native (torch.autocast)")
    if config.train == "fp32":
        return []
    dtype = torch.float16 if config.train == "fp16" else torch.bfloat16
    handles: list[Any] = []
    attach_autocast(model, ctx.device.type, dtype, handles)

    def detach(final: nn.Module) -> nn.Module:
        for h in handles:
            h.remove()
        return final

    ctx.finalizers.append(detach)
    return [GradScalerCallback(config.init_scale, config.growth_interval, enabled=config.loss_scale != "none",
                               device=ctx.device.type)]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def train_in_precision(model: nn.Module, config: _PrecisionConfig, ctx: TransformContext) -> nn.Module:
    """Train under ``config`` (see the module docstring): a fresh model, or the given one when an earlier
    block changed it (quantized, pruned, FATReLU thresholds)."""
    kind = transformed_by(model)
    if kind is None and ctx.make_model is None:
        raise EffdnnError("precision: training from scratch needs the recipe's model (run it from a recipe)")
    if kind is None and _shapes(ctx.make_model()) != _shapes(model):
        kind = "channel-pruned"  # structured pruning removed channels: a fresh model would have them all
    fresh = ctx.make_model() if kind is None else model
    reference = ctx.make_model() if kind is None else copy.deepcopy(model)  # the float32 step it is timed against
    stats = LowpStats()
    prepare = PREPARE.get(config.train)
    if kind in ("quantized", "pruned"):
        callbacks = _autocast_given(config, fresh, ctx, kind)
    else:
        callbacks = prepare(config, fresh, ctx.device, stats) if prepare else []
    ctx.extra["precision"] = config.train
    if kind is not None:
        ctx.extra["precision_trains"] = f"the {kind} model"
    if config.step_time_batches and ctx.has_data():
        loader = torch.utils.data.DataLoader(ctx.train_set(), batch_size=ctx.batch_size, shuffle=False)
        batches = [move(b, ctx.device) for _, b in zip(range(config.step_time_batches), loader)]
        t_fp32 = step_time(reference, batches, [])
        t_low = step_time(fresh, batches, callbacks) if callbacks or kind is None and prepare else t_fp32
        ctx.extra.update({"step_time_s": t_low, "fp32_step_time_s": t_fp32, "step_time_ratio_fp32": t_low / t_fp32})
    ctx.callbacks.extend(callbacks)
    if ctx.finetune is None:
        if ctx.baseline_spec is None or ctx.baseline_spec.checkpoint:
            raise EffdnnError("precision: no training settings; give the experiment a finetune block")
        ctx.fit(fresh, ctx.baseline_spec, desc=f"precision-{config.train}")
    return fresh


for _name, _cfg, _summary in [
    ("fp32", FP32Config, "float32 training from scratch (the reference for the other precisions)"),
    ("fp16", FP16Config, "fp16 mixed precision: fp32 master weights, dynamic loss scaling (Micikevicius 2018)"),
    ("bf16", BF16Config, "bf16 mixed precision: fp32 master weights (no loss scaling needed)"),
    ("fp8", FP8Config, "FP8 (1,5,2) training, FP16 chunked accumulation, SR weight updates (Wang 2018)"),
    ("hfp8", HFP8Config, "hybrid FP8: (1,4,3) forward, (1,5,2) backward (Sun 2019)"),
]:
    PRECISION.register(_name, _cfg, _summary)(train_in_precision)

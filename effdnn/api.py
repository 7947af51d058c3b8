"""The Python API: a recipe block applied to your model, with the meaning it has in a recipe.

``prune`` / ``quantize`` apply one block at once, to a copy; ``Experiment`` takes the dict of one
recipe experiment (``prune`` / ``activation_sparsity`` / ``quantize`` / ``precision`` / ``compress`` /
``finetune`` / ``calib_batches``), validated as the recipe validates it, and lets your own training
loop drive what the recipe's fine-tuning would: the techniques' training hooks (effdnn.hooks), their
step-counted schedules (AGP, iterative, RigL, gradual FATReLU), their finalizers (QAT conversion) and
report fields. A block never edits the model you pass in.
"""
from __future__ import annotations

import copy
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from torch.utils.data import Dataset

from .composition import check_composition
from .context import ExperimentContext
from .data import DataBundle
from .errors import EffdnnError
from .hooks import Callback
from .prune.activation import GradualFATReLU
from .prune.rigl import RigL
from .prune.sparse import MaskCallback
from .prune.unstructured import ScheduledPruning
from .quant.methods.pact import PACTRegulariser
from .quant.qat import FreezeBN, convert_qat
from .recipe import BLOCKS, ExperimentSpec
from .registry import REGISTRIES, format_validation_error
from .train import TrainResult, evaluate
from .utils.batches import batch_input, model_device

LOOP_HOOKS = ("on_fit_start", "on_epoch_start", "extra_loss", "backward_step", "after_step", "on_fit_end")
STEP_SCHEDULES = (ScheduledPruning, RigL, GradualFATReLU)  # callbacks that count optimizer steps
REPORT_ATTR = "effdnn_report"  # the report of the call that made a model, a dict attribute of it


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook) is not getattr(Callback, hook)


def _without_loop(block: str, config: BaseModel, cb: Callback, model: nn.Module) -> None:
    """Let ``cb`` go without a training loop, applying now what it would do at the start; or refuse,
    in one line, when it needs the loop that trains the model."""
    if type(cb) is MaskCallback:  # a one-shot mask: the sparse layers keep it themselves (prune/sparse.py)
        return
    if isinstance(cb, PACTRegulariser) and cb.decay == 0:  # no L2 term: it only reports the clips
        return
    if isinstance(cb, FreezeBN) and cb.epoch == 0:  # frozen from the first epoch on: freeze now
        cb.on_epoch_start(model, 0)
        return
    hooks = [h for h in LOOP_HOOKS if _overrides(cb, h)]
    if not hooks:
        return
    method = getattr(config, REGISTRIES[block].key)
    raise EffdnnError(f"{block}: method {method!r} needs {type(cb).__name__}.{hooks[0]} in the loop that trains the "
                      f"model; use effdnn.Experiment(model, {{'{block}': ..., 'finetune': ...}}, data=...) and step it")


def check_model(model: Any, where: str) -> nn.Module:
    """``model`` if it is a torch module; else one line naming the call."""
    if not isinstance(model, nn.Module):
        raise EffdnnError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_batches(data: Any, where: str, arg: str) -> None:
    """``data`` must be an iterable of batches (a DataLoader, a list of tensors / tuples / dicts)."""
    if data is None:
        return
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise EffdnnError(f"{where}: {arg} must be an iterable of batches (a DataLoader or a list of tensors), "
                          f"got {type(data).__name__}")


def _one_shot(block: str, model: nn.Module, spec: Any, data: Iterable[Any] | None, data_arg: str) -> nn.Module:
    check_model(model, f"effdnn.{block}")
    check_batches(data, f"effdnn.{block}", data_arg)
    reg = REGISTRIES[block]
    config = reg.parse(spec)
    model = copy.deepcopy(model)
    old = dict(getattr(model, REPORT_ATTR, {}) or {})
    ctx = ExperimentContext(data=None, device=model_device(model), calib_data=data, data_arg=data_arg)
    model = reg.method_of(config).transform(model, config, ctx)
    for cb in ctx.callbacks:
        _without_loop(block, config, cb, model)
    for fin in ctx.finalizers:
        if fin is not convert_qat:  # QAT: your loop trains the model, then effdnn.convert_qat converts it
            model = fin(model)
    report: dict[str, Any] = {**old, **ctx.extra}
    report["techniques"] = {**old.get("techniques", {}), block: config.model_dump(mode="json")}
    for cb in ctx.callbacks:
        report.update(cb.report())
    if ctx.train_result is not None:  # prune.finetune trained it here
        report["epoch_time_s"] = ctx.train_result.epoch_time_s
    setattr(model, REPORT_ATTR, report)
    return model


def quantize(model: nn.Module, spec: Any, calib_data: Iterable[Any] | None = None) -> nn.Module:
    """A quantized COPY of ``model`` (the input is left as it was), as the ``quantize`` block ``spec``
    (a dict or config object) says; ``calib_data``: any iterable of batches (tensors, (input, label)
    tuples, or dicts of kwargs).

    Training methods (qat, lsq, dorefa) return the prepared model: train it in any loop, then call
    ``effdnn.convert_qat``. A method whose training needs per-step hooks (PACT's L2 term, BatchNorm
    frozen at a later epoch, BinaryConnect's weight clipping) is refused here in one line: drive it with
    :class:`Experiment`. The report fields (the recipe's) are the dict ``model.effdnn_report``."""
    return _one_shot("quantize", model, spec, calib_data, "calib_data")


def prune(model: nn.Module, spec: Any, data: Iterable[Any] | None = None) -> nn.Module:
    """A pruned COPY of ``model`` (the input is left as it was), as the ``prune`` block ``spec`` says;
    ``data`` (batches) feeds data-driven saliencies and ``prune.finetune``'s training.

    One-shot masks stay in the layers; a gradual schedule (agp / iterative / rigl) runs here only with
    ``prune.finetune`` (effdnn's own training on ``data``); to step it from your own loop use
    :class:`Experiment`. Report fields: ``model.effdnn_report``."""
    return _one_shot("prune", model, spec, data, "data")


def parse_experiment(blocks: dict[str, Any]) -> tuple[ExperimentSpec, dict[str, BaseModel]]:
    """The dict of one recipe experiment -> (its ExperimentSpec, each technique block's config), with
    the recipe's one-line errors and key paths taken from the experiment (``prune.sparsity: ...``)."""
    if not isinstance(blocks, dict):
        raise EffdnnError(f"experiment: expected a mapping of blocks, got {type(blocks).__name__}")
    try:
        spec = ExperimentSpec.model_validate({"name": "experiment", **blocks})
    except ValidationError as err:
        raise EffdnnError(format_validation_error(err)) from None
    configs = {b: REGISTRIES[b].parse(getattr(spec, b), b) for b in BLOCKS if getattr(spec, b) is not None}
    check_composition({**configs, "finetune": spec.finetune}, "experiment")  # the recipe's table and message
    return spec, configs


@dataclass
class _LoopContext(ExperimentContext):
    """An experiment's context whose fine-tuning steps may be counted by the user's own loop."""

    loop_steps: int | None = None  # Experiment(steps_per_epoch=...)
    planned: int | None = None  # the steps per epoch a schedule was built for

    def steps_per_epoch(self, spec: Any) -> int:
        if self.loop_steps is not None:
            n = self.loop_steps
        elif self.data is not None:
            n = super().steps_per_epoch(spec)
        elif isinstance(self.calib_data, Sized):
            n = min(len(self.calib_data), spec.max_batches or len(self.calib_data))
        else:
            raise EffdnnError("finetune: a schedule counts optimizer steps and data has no len(): pass steps_per_epoch=")
        self.planned = n
        return n


def _split_data(data: Any, batch_size: int | None) -> tuple[DataBundle | None, Any, int]:
    """(bundle, batches, batch size) from a DataBundle, a Dataset of (input, label) items, or batches."""
    if data is None or isinstance(data, DataBundle):
        return data, None, batch_size or 128
    if isinstance(data, Dataset):
        return DataBundle("data", data, data, 0, 0, (0, 0)), None, batch_size or 128
    x = batch_input(next(iter(data))) if isinstance(data, Sized) and len(data) else None
    return None, data, batch_size or (len(x) if isinstance(x, torch.Tensor) else 128)


class Experiment:
    """One recipe experiment on your model, driven by effdnn's training (``fit``) or by your own loop.

    ``blocks`` is the dict of a recipe's ``experiments`` entry (``name`` optional), validated with the
    recipe's messages; the technique blocks apply at once, in the recipe's order, to a copy of
    ``model`` (``exp.model``). ``data``: a DataBundle (``effdnn.data.load_data``), a Dataset of (input,
    label) items, or an iterable of batches; it calibrates, and trains ``fit``. ``steps_per_epoch``:
    the optimizer steps of one epoch of your loop (default: ``len(data)`` for batches, the recipe's
    count for a data set); step-counted schedules plan ``finetune.epochs`` times it. ``seed`` and
    ``batch_size`` are the recipe's ``seed`` and ``data.batch_size``; ``make_model`` gives a fresh
    model where a block trains from scratch (``precision``, ``quantize.from_scratch``). As in a recipe,
    the global torch seed is set to ``seed`` before the blocks apply.

    ``finetune``: in your loop only ``epochs`` (and ``max_batches``) count, for the schedules; the rest
    (optimizer, lr, schedule) is ``exp.fit()``'s, and ``distill`` / ``swa`` are refused in your loop.

    Your loop, in the order effdnn's own calls the hooks::

        exp.attach(opt)                 # on_fit_start
        for epoch in range(E):
            exp.epoch(epoch)            # on_epoch_start (BatchNorm freezing)
            for x, y in batches:
                loss = exp.loss(task_loss(exp.model(x), y))   # + the techniques' regularisers
                opt.zero_grad()
                exp.backward(loss, opt) # loss.backward(); opt.step(), or the loss scaler's own
                exp.step()              # after_step: masks, pruning schedules, clipping
        model = exp.finish()            # on_fit_end, finalizers (QAT conversion), compress
    """

    def __init__(self, model: nn.Module, blocks: dict[str, Any], data: Any = None, steps_per_epoch: int | None = None,
                 *, seed: int = 0, batch_size: int | None = None,
                 make_model: Callable[[], nn.Module] | None = None) -> None:
        self.spec, self.configs = parse_experiment(blocks)
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise EffdnnError(f"steps_per_epoch: must be >= 1, got {steps_per_epoch}")
        bundle, batches, size = _split_data(data, batch_size)
        ft = self.spec.finetune if self.spec.finetune is not None and self.spec.finetune.epochs > 0 else None
        self.ctx = _LoopContext(data=bundle, device=model_device(model), seed=seed, batch_size=size,
                                calib_batches=self.spec.calib_batches, teacher=model, make_model=make_model,
                                calib_data=batches, finetune=ft, data_arg="data", loop_steps=steps_per_epoch)
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps, self._epoch, self._backward, self._state = 0, -1, False, "ready"
        self._before: dict[str, Any] = {}
        torch.manual_seed(seed)
        self.model = copy.deepcopy(model)
        for block in BLOCKS[:-1]:
            if block in self.configs:
                self.model = self._apply(block)

    def _apply(self, block: str) -> nn.Module:
        config = self.configs[block]
        return REGISTRIES[block].method_of(config).transform(self.model, config, self.ctx)

    @property
    def callbacks(self) -> list[Callback]:
        """The techniques' training hooks, as the recipe's fine-tuning would get them."""
        return self.ctx.callbacks

    def _expect(self, states: tuple[str, ...], what: str) -> None:
        if self._state not in states:
            raise EffdnnError(f"{what}: not after the experiment is {self._state} (order: attach, then epoch / loss / "
                              "backward / step, then finish; or fit, then finish)")

    def _taker(self) -> Callback | None:
        takers = [cb for cb in self.callbacks if _overrides(cb, "backward_step")]
        if len(takers) > 1:
            raise EffdnnError(f"two techniques both take over the optimizer step: {[type(c).__name__ for c in takers]}")
        return takers[0] if takers else None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Start fine-tuning ``exp.model`` with ``optimizer`` in your loop (the hooks' ``on_fit_start``)."""
        self._expect(("ready",), "attach")
        ft = self.ctx.finetune
        if ft is not None and (ft.distill is not None or ft.swa is not None):
            raise EffdnnError("finetune: distill and swa are effdnn's own training (exp.fit()), not steps of your loop")
        self._taker()
        self.optimizer = optimizer
        for cb in self.callbacks:
            cb.on_fit_start(self.model, optimizer)
        self._state = "attached"

    def epoch(self, n: int) -> None:
        """Call at the start of epoch ``n`` (0-based) of your loop (``on_epoch_start``)."""
        self._expect(("attached",), "epoch")
        for cb in self.callbacks:
            cb.on_epoch_start(self.model, n)
        self._epoch = n

    def loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """``task_loss`` plus every technique's term (``extra_loss``: PACT's L2, activation penalties)."""
        self._expect(("attached",), "loss")
        total = task_loss
        for cb in self.callbacks:
            extra = cb.extra_loss(self.model)
            if extra is not None:
                total = total + extra
        return total

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """``loss.backward(); optimizer.step()``, or the technique's own (a loss scaler's scaled backward,
        overflow check, step or skip); returns whether the step was taken. Needed when a ``precision``
        block scales the loss; zero the gradients before, as usual."""
        self._expect(("attached",), "backward")
        opt = optimizer or self.optimizer
        taker = self._taker()
        self._backward = True
        if taker is not None:
            return bool(taker.backward_step(loss, self.model, opt))  # type: ignore[arg-type]
        loss.backward()
        opt.step()  # type: ignore[union-attr]
        return True

    def step(self) -> None:
        """Call after each optimizer step (``after_step``: masks re-applied, schedules advanced)."""
        self._expect(("attached",), "step")
        taker = self._taker()
        if taker is not None and not self._backward:
            raise EffdnnError(f"step: {type(taker).__name__} takes over backward and the optimizer step: use "
                              "exp.backward(loss, optimizer) instead of loss.backward(); optimizer.step()")
        if self._epoch < 0 and any(_overrides(cb, "on_epoch_start") for cb in self.callbacks):
            raise EffdnnError("step: a technique acts at epoch starts (BatchNorm freezing): call exp.epoch(n) at the "
                              "start of each epoch")
        for cb in self.callbacks:
            cb.after_step(self.model, self.optimizer)  # type: ignore[arg-type]
        self.steps += 1
        self._backward = False

    def fit(self) -> TrainResult:
        """Fine-tune ``exp.model`` with effdnn's own training, as the recipe does (needs labelled data)."""
        self._expect(("ready",), "fit")
        ft = self.ctx.finetune
        if ft is None:
            raise EffdnnError("fit: the experiment has no finetune block with epochs > 0")
        planned = self.ctx.planned
        runs = ExperimentContext.steps_per_epoch(self.ctx, ft) if planned is not None else None
        if runs != planned:
            raise EffdnnError(f"fit: effdnn's training runs {runs} steps per epoch, the schedule was planned for "
                              f"{planned}: drop steps_per_epoch=")
        result = self.ctx.fit(self.model, ft, desc=self.spec.name)
        self._state = "fitted"
        return result

    def _check_schedules(self) -> None:
        scheduled = [type(cb).__name__ for cb in self.callbacks if isinstance(cb, STEP_SCHEDULES)]
        if not scheduled or self._state == "fitted":
            return
        if self._state == "ready":
            raise EffdnnError(f"finish: {scheduled[0]} runs during fine-tuning: call exp.fit() or step the experiment first")
        total = (self.ctx.planned or 0) * self.ctx.finetune.epochs  # type: ignore[union-attr]
        if self.steps < total:
            raise EffdnnError(f"finish: {scheduled[0]} was planned for {total} optimizer steps (finetune.epochs x "
                              f"{self.ctx.planned}); {self.steps} were stepped")

    def finish(self) -> nn.Module:
        """End fine-tuning (``on_fit_end``), run the finalizers (QAT conversion, packing, report fields),
        then the ``compress`` block if any; returns the final model (also ``exp.model``), whose
        ``effdnn_report`` is ``exp.report()``."""
        self._expect(("ready", "attached", "fitted"), "finish")
        self._check_schedules()
        if self._state == "attached":
            for cb in self.callbacks:
                cb.on_fit_end(self.model)
        for fin in self.ctx.finalizers:
            self.model = fin(self.model)
        if "compress" in self.configs:
            if self.ctx.data is not None:
                self._before["accuracy_before_compress"] = evaluate(self.model, self.ctx.data.test, batch_size=512)
            self.model = self._apply("compress")
        self._state = "finished"
        setattr(self.model, REPORT_ATTR, self.report())
        return self.model

    def report(self) -> dict[str, Any]:
        """The report fields a recipe gives this experiment (less the measurements: accuracy, cost):
        ``techniques`` (each block's validated config), the techniques' fields, the hooks' ``report()``."""
        out: dict[str, Any] = {"techniques": {b: c.model_dump(mode="json") for b, c in self.configs.items()},
                               **self._before, **self.ctx.extra}
        for cb in self.callbacks:
            out.update(cb.report())
        if self.ctx.train_result is not None:
            out["epoch_time_s"] = self.ctx.train_result.epoch_time_s
        return out

"""What a registered transform may use: the protocol below quant / prune / lowp / compress.

Every technique is ``transform(model, config, ctx) -> model``. ``ctx`` is a :class:`TransformContext`:
the data a transform may draw on (calibration batches, the training split, an example input), the
training it may ask for (``fit``, run by the layer above with the experiment's callbacks), and where
it leaves what it adds to the experiment (training callbacks, finalizers, report fields).

Techniques import this protocol only, never the training engine or the data loaders: the recipe
runner and the Python API (``effdnn.context.ExperimentContext``) implement it from above.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from .hooks import Callback
from .train_spec import TrainSpec

Finalizer = Callable[[nn.Module], nn.Module]


class TransformContext(Protocol):
    device: torch.device
    seed: int
    batch_size: int
    calib_batches: int
    out_dir: Path | None
    resume: bool
    teacher: nn.Module | None  # the experiment's baseline model (for distillation)
    make_model: Callable[[], nn.Module] | None  # a fresh, untrained model of the recipe
    baseline_spec: TrainSpec | None  # how the baseline was trained (from-scratch techniques reuse it)
    finetune: TrainSpec | None  # the fine-tuning that runs after the transforms (None: none)
    callbacks: list[Callback]  # kept through the fine-tuning
    finalizers: list[Finalizer]  # run after the fine-tuning (e.g. converting a QAT model)
    extra: dict[str, Any]  # report fields

    def calib_loader(self, batches: int | None = None) -> Iterable[Any]:
        """The calibration batches (the API's ``calib_data``, else a seeded draw of the training split)."""
        ...

    def has_data(self) -> bool:
        """Whether a labelled data set (training and test splits) stands behind the context."""
        ...

    def example_input(self, n: int = 64) -> torch.Tensor:
        """``n`` test inputs, on the context's device."""
        ...

    def train_set(self) -> torch.utils.data.Dataset:
        """The labelled training split."""
        ...

    def steps_per_epoch(self, spec: TrainSpec) -> int:
        """Optimizer steps in one epoch of ``spec``."""
        ...

    def fit(self, model: nn.Module, spec: TrainSpec, desc: str, extra_callbacks: Iterable[Callback] = (),
            own_callbacks: bool = True) -> Any:
        """Train ``model`` in place by ``spec`` (with the experiment's callbacks unless ``own_callbacks``
        is False), checkpointed and resumable under ``desc``."""
        ...

    def evaluate(self, model: nn.Module) -> float | None:
        """Test accuracy of ``model``, or None when there is no labelled test split."""
        ...

"""The experiment context: the implementation of ``transform.TransformContext`` that the recipe runner
and the Python API hand to every registered transform."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from .data import DataBundle
from .errors import EffdnnError
from .train import Callback, TrainResult, TrainSpec, evaluate, fit
from .utils.batches import batch_input, move


@dataclass
class ExperimentContext:
    """Passed to every registered transform as ``transform(model, config, ctx)``.

    A transform may add training callbacks (kept through ``finetune``), finalizers (run after it,
    e.g. converting a QAT model or writing a container file), and extra report fields.
    """

    data: DataBundle | None
    device: torch.device
    seed: int = 0
    batch_size: int = 128
    calib_batches: int = 16
    out_dir: Path | None = None
    baseline_spec: TrainSpec | None = None
    teacher: nn.Module | None = None  # the experiment's baseline model, for finetune.distill
    make_model: Callable[[], nn.Module] | None = None  # a fresh, untrained model of the recipe
    resume: bool = False
    callbacks: list[Callback] = field(default_factory=list)
    finalizers: list[Callable[[nn.Module], nn.Module]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    train_result: TrainResult | None = None
    calib_data: Iterable[Any] | None = None  # given by the Python API; else drawn from ``data``
    finetune: TrainSpec | None = None  # the fine-tuning the runner runs after the transforms (None: none)
    data_arg: str = "calib_data"  # the Python API argument that gives the batches, named in errors

    def calib_loader(self, batches: int | None = None) -> Iterable[Any]:
        """The calibration batches: the API's ``calib_data``, else the first ``batches`` batches of a
        seeded shuffle of the training split."""
        if self.calib_data is not None:
            return self.calib_data
        if self.data is None:
            raise EffdnnError(f"this method needs calibration data: pass {self.data_arg}=<iterable of batches>")
        g = torch.Generator().manual_seed(self.seed)
        n = (batches or self.calib_batches) * self.batch_size
        idx = torch.randperm(len(self.data.train), generator=g)[:n].tolist()
        return DataLoader(torch.utils.data.Subset(self.data.train, idx), batch_size=self.batch_size)

    def _need_data(self, what: str) -> DataBundle:
        if self.data is None:
            raise EffdnnError(f"this method needs {what}: run it from a recipe, or pass {self.data_arg}=<batches>")
        return self.data

    def has_data(self) -> bool:
        return self.data is not None

    def evaluate(self, model: nn.Module) -> float | None:
        return evaluate(model, self.data.test, batch_size=512) if self.data is not None else None

    def example_input(self, n: int = 64) -> Any:
        """``n`` test images (text: a dict batch of ``n`` test examples); from the Python API, the first ``n`` inputs of the first given batch."""
        if self.data is None and self.calib_data is not None:
            first = next(iter(self.calib_data), None)
            x = batch_input(first) if first is not None else None
            if isinstance(x, torch.Tensor):
                return x[:n].to(self.device)
        test = self._need_data("an example input").test
        if self.data is not None and self.data.text:  # token examples: one dict batch (labels left out)
            return move(batch_input(default_collate([test[i] for i in range(min(n, len(test)))])), self.device)
        return torch.stack([test[i][0] for i in range(min(n, len(test)))]).to(self.device)

    def train_set(self) -> torch.utils.data.Dataset:
        """The training split; from the Python API, the labelled ``calib_data`` batches as one data set."""
        if self.data is None and self.calib_data is not None:
            xs, ys = [], []
            for b in self.calib_data:
                if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], torch.Tensor)):
                    raise EffdnnError("training from the Python API needs (input, label) batches of tensors")
                xs.append(b[0].cpu())
                ys.append(torch.as_tensor(b[1]).cpu())
            if not xs:
                raise EffdnnError("the training data is empty")
            return torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
        return self._need_data("training data").train

    def steps_per_epoch(self, spec: TrainSpec) -> int:
        """Optimizer steps in one epoch of ``spec`` (what ``fit`` will run)."""
        n = math.ceil(len(self.train_set()) / (spec.batch_size or self.batch_size))
        return min(n, spec.max_batches or n)

    def fit(self, model: nn.Module, spec: TrainSpec, desc: str, extra_callbacks: Iterable[Callback] = (),
            own_callbacks: bool = True) -> TrainResult:
        """Train with this experiment's callbacks (unless ``own_callbacks`` is False), checkpointed under
        ``out_dir/ckpt/desc`` when there is an ``out_dir``."""
        ckpt = self.out_dir / "ckpt" / desc if self.out_dir else None
        callbacks = [*(self.callbacks if own_callbacks else ()), *extra_callbacks]
        result = fit(model, self.train_set(), spec, batch_size=self.batch_size, seed=self.seed,
                     checkpoint_dir=ckpt, resume=self.resume, callbacks=callbacks, desc=desc,
                     teacher=self.teacher if spec.distill is not None else None)
        self.train_result = result
        if spec.swa is not None:
            self.extra.setdefault("swa_models", {})[desc] = result.swa_models
        return result

    def fresh_copy(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

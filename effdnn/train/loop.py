"""fit / evaluate: seeded, deterministic, checkpointed at every epoch, resumable, DDP-aware."""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import EffdnnError
from ..utils.batches import batch_input, forward, move, model_device
from ..utils import distributed as ddp
from ..hooks import Callback
from .averaging import WeightAverager
from .checkpoint import load_checkpoint, save_atomic
from ..train_spec import TrainSpec
from .sampler import GlobalBatchSampler
from .teacher import TeacherLogits

CHECKPOINT = "last.pt"


@dataclass
class TrainResult:
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    swa_models: int = 0  # weight sets averaged (TrainSpec.swa), 0 without averaging

    @property
    def epoch_time_s(self) -> float:
        times = [h["time_s"] for h in self.history]
        return sum(times) / len(times) if times else 0.0


def make_optimizer(params: Iterable[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def lr_factor(spec: TrainSpec, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at a global step: linear warm-up, then none / cosine / step decay over
    ``spec.schedule_epochs``, then SWA's constant rate for the averaging phase."""
    epoch = step / steps_per_epoch
    if spec.swa is not None and epoch >= spec.schedule_epochs:
        return spec.swa.lr / spec.lr
    if spec.warmup_epochs and epoch < spec.warmup_epochs:
        return (step + 1) / (spec.warmup_epochs * steps_per_epoch)
    if spec.schedule == "cosine":
        total = max(spec.schedule_epochs * steps_per_epoch, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if spec.schedule == "step":
        return spec.gamma ** int(epoch // spec.step_size)
    return 1.0


def _fingerprint(spec: TrainSpec, model: nn.Module, batch_size: int, seed: int, world: int) -> str:
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    blob = json.dumps([spec.model_dump(), batch_size, seed, world, shapes], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _loader(ds: Dataset, batch_size: int, seed: int, shuffle: bool) -> tuple[DataLoader, GlobalBatchSampler]:
    """The same global batches (seed + epoch permutation) in one process and under DDP, for any data-set size."""
    world, rank = ddp.world_size(), ddp.rank()
    if batch_size % world:
        raise EffdnnError(f"batch_size {batch_size} must be divisible by the {world} processes")
    sampler = GlobalBatchSampler(len(ds), batch_size, world, rank, seed, shuffle)
    return DataLoader(ds, batch_sampler=sampler, num_workers=0), sampler


def _split(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(input, labels); labels None for a label-free batch (a tensor, a 1-tuple, a dict without labels)."""
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k not in ("labels", "label")}, batch.get("labels", batch.get("label"))
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch_input(batch), batch[1] if len(batch) > 1 else None


def embedding(out: Any, x: Any, pooled: bool = True) -> torch.Tensor:
    """The features feature distillation compares: a Hugging Face output's last hidden state (mean-pooled
    over ``x['attention_mask']`` when ``pooled``), else the output itself, flattened per example."""
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else _logits(out)
    if not pooled:
        return h
    if h.dim() == 3:
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        m = (mask if mask is not None else torch.ones(h.shape[:2], device=h.device))[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return h.reshape(h.shape[0], -1)


def feature_loss(student: Any, teacher: Any, x: Any, kind: str) -> torch.Tensor:
    """``cosine``: mean 1 - cos(e_s, e_t) of the embeddings; ``mse``: mean squared hidden-state difference
    (DistillSpec.feature)."""
    if kind == "cosine":
        return (1 - F.cosine_similarity(embedding(student, x), embedding(teacher, x).detach(), dim=-1)).mean()
    return F.mse_loss(embedding(student, x, pooled=False), embedding(teacher, x, pooled=False).detach())


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@dataclass
class _Run:
    """Everything one ``fit`` call sets up before its first step."""

    spec: TrainSpec
    desc: str
    log: bool
    callbacks: Sequence[Callback]
    loader: DataLoader
    sampler: GlobalBatchSampler
    steps_per_epoch: int
    net: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    averager: WeightAverager | None
    soft_targets: TeacherLogits | None
    taker: Callback | None  # the one callback that replaces backward + step, if any
    teacher: nn.Module | None = None  # feature distillation runs it at every step


def _setup(model: nn.Module, train: Dataset, spec: TrainSpec, batch_size: int, seed: int, callbacks: Sequence[Callback],
           desc: str, log: bool, teacher: nn.Module | None) -> _Run:
    torch.manual_seed(seed)
    loader, sampler = _loader(train, batch_size, seed, shuffle=True)
    steps_per_epoch = min(len(loader), spec.max_batches or len(loader))
    net: nn.Module = DistributedDataParallel(model) if ddp.world_size() > 1 else model
    optimizer = make_optimizer(model.parameters(), spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(spec, s, steps_per_epoch))
    averager = WeightAverager(spec, steps_per_epoch) if spec.swa is not None else None
    soft_targets = None
    if spec.distill is not None and spec.distill.feature is None:
        soft_targets = TeacherLogits(teacher, train, model_device(model), _logits, spec.epochs * steps_per_epoch * batch_size)
    takers = [cb for cb in callbacks if type(cb).backward_step is not Callback.backward_step]
    if len(takers) > 1:
        raise EffdnnError(f"two techniques both take over the optimizer step: {[type(c).__name__ for c in takers]}")
    return _Run(spec, desc, log, callbacks, loader, sampler, steps_per_epoch, net, optimizer, scheduler, averager,
                soft_targets, takers[0] if takers else None, teacher)


def _resume(run: _Run, model: nn.Module, ckpt: Path, fp: str, result: TrainResult) -> int:
    """Load the checkpoint into the model, optimizer, schedule, RNG and callbacks; the epochs done."""
    state = load_checkpoint(ckpt)
    if state.get("fingerprint") != fp:
        raise EffdnnError(f"{ckpt}: made with other settings (model, training block, batch size or seed); delete it to start over")
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    for cb, s in zip(run.callbacks, state["callbacks"]):
        cb.load_state_dict(s)
    if run.averager is not None:
        run.averager.load_state_dict(state["swa"])
    result.resumed_from = int(state["epoch"])
    result.history = list(state["history"])
    if run.log and ddp.is_main():
        print(f"{run.desc}: resumed after epoch {result.resumed_from} from {ckpt}", file=sys.stderr)
    return result.resumed_from


def _task_loss(run: _Run, x: Any, out: Any, y: torch.Tensor | None, real: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, labels) of the batch's ``real`` items: cross-entropy, feature distillation, or both."""
    spec, feature = run.spec, run.spec.distill.feature if run.spec.distill is not None else None
    if y is None and feature is None:
        raise EffdnnError(f"{run.desc}: the batches have no labels; train without them by feature distillation "
                          "(finetune: {distill: {feature: cosine}})")
    logits = _logits(out)
    if y is not None and real < y.numel():  # a stand-in item (an empty share of the last batch under DDP): no loss
        logits, y = logits[:real], y[:real]
    ce = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing) if y is not None and real else None
    if feature is None:
        return (ce if ce is not None else logits.sum() * 0), y
    with torch.no_grad():
        t_out = forward(run.teacher, x)
    fl = feature_loss(out, t_out, x, feature)
    a = spec.distill.alpha  # type: ignore[union-attr]
    return (fl if ce is None else (1 - a) * ce + a * fl), y


def _step(run: _Run, model: nn.Module, batch: Any, soft_index: Any, step: int, where: str
          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One optimizer step on ``batch``: (logits, labels or None, task loss) of the batch's real items."""
    spec = run.spec
    x, y = _split(move(batch, model_device(model)))
    out = forward(run.net, x)
    real, weight = run.sampler.share_weight(step)
    loss, y = _task_loss(run, x, out, y, real)
    logits = _logits(out) if y is not None else embedding(out, x).detach()
    if y is not None and run.soft_targets is not None and spec.distill is not None and real:
        soft = run.soft_targets(x, soft_index)
        loss = distillation_loss(logits, soft, loss, spec.distill.alpha, spec.distill.temperature)
    if not torch.isfinite(loss):
        raise EffdnnError(f"{run.desc}: loss became {loss.item()} at {where}; lower the learning rate")
    # this rank's share of the global mean (DDP averages over ranks); exactly 1 alone and on even batches
    full = loss * weight if weight != 1 else loss
    for cb in run.callbacks:
        extra = cb.extra_loss(model)
        if extra is not None:
            full = full + extra
    run.optimizer.zero_grad(set_to_none=True)
    if run.taker is not None:
        run.taker.backward_step(full, run.net, run.optimizer)
    else:
        full.backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        run.optimizer.step()
    run.scheduler.step()
    for cb in run.callbacks:
        cb.after_step(model, run.optimizer)
    return logits, y, loss


def _epoch(run: _Run, model: nn.Module, epoch: int) -> dict[str, float]:
    """One epoch of steps; the epoch's row of the history (loss and accuracy over every rank)."""
    t0 = time.perf_counter()
    run.sampler.set_epoch(epoch)
    run.net.train()
    for cb in run.callbacks:
        cb.on_epoch_start(model, epoch)
    total, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(run.loader, total=run.steps_per_epoch, desc=f"{run.desc} {epoch + 1}/{run.spec.epochs}", leave=False,
               disable=None if ddp.is_main() else True, file=sys.stderr)
    # the items of each batch, in the loader's order (the sampler is seeded by seed + epoch)
    cached = run.soft_targets is not None and run.soft_targets.cached
    indices = iter(run.loader.batch_sampler) if cached else None
    for step, batch in enumerate(bar):
        if step >= run.steps_per_epoch:
            break
        soft_index = next(indices) if indices is not None else None
        logits, y, loss = _step(run, model, batch, soft_index, step, f"epoch {epoch + 1}, step {step + 1}")
        if run.averager is not None:
            run.averager.after_step(model, epoch * run.steps_per_epoch + step + 1)
        n = y.numel() if y is not None else logits.shape[0]
        total += n
        correct += int((logits.argmax(-1) == y).sum()) if y is not None else 0
        loss_sum += loss.item() * n
        bar.set_postfix(loss=f"{loss_sum / total:.4f}")
    stats = torch.tensor([loss_sum, correct, total], dtype=torch.float64, device=model_device(model))
    ddp.all_reduce_(stats)
    return {"epoch": epoch + 1, "loss": float(stats[0] / stats[2]), "train_accuracy": float(stats[1] / stats[2]),
            "time_s": time.perf_counter() - t0, "lr": run.optimizer.param_groups[0]["lr"]}


def _save(run: _Run, model: nn.Module, ckpt: Path, fp: str, epoch: int, result: TrainResult) -> None:
    save_atomic({"fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "rng": torch.get_rng_state(), "callbacks": [cb.state_dict() for cb in run.callbacks],
                 "history": result.history, "swa": run.averager.state_dict() if run.averager else None}, ckpt)


def fit(
    model: nn.Module,
    train: Dataset,
    spec: TrainSpec,
    *,
    batch_size: int,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    desc: str = "train",
    log: bool = True,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy for ``spec.epochs`` epochs.

    With ``checkpoint_dir`` a checkpoint is written atomically after each epoch; ``resume=True`` then
    continues from it and reaches the same final weights as an uninterrupted run. Under torchrun the
    model is wrapped in DistributedDataParallel and only rank 0 writes checkpoints. ``spec.distill``
    adds the distillation term against ``teacher``'s outputs (``distillation_loss``; computed once
    before training for a ``TensorDataset``, ``teacher.TeacherLogits``); ``spec.swa``
    averages the weights of the last epochs (``averaging.WeightAverager``) and the model ends with the
    average, its BatchNorm statistics recomputed, before the callbacks' ``on_fit_end``.

    The steps: ``_setup`` (loader, optimizer, schedule, averager, teacher), ``_resume``, then per epoch
    ``_epoch`` (``_step`` per batch) and ``_save``, then the averaging and the callbacks' end.
    """
    if spec.distill is not None and teacher is None:
        raise EffdnnError(f"{desc}: distill needs a teacher model (in a recipe: the experiment's baseline)")
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    batch_size = spec.batch_size or batch_size
    run = _setup(model, train, spec, batch_size, seed, callbacks, desc, log, teacher)
    for cb in callbacks:
        cb.on_fit_start(model, run.optimizer)
    result = TrainResult(spec.epochs)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    fp = _fingerprint(spec, model, batch_size, seed, ddp.world_size())
    start = _resume(run, model, ckpt, fp, result) if resume and ckpt is not None and ckpt.is_file() else 0
    for epoch in range(start, spec.epochs):
        row = _epoch(run, model, epoch)
        result.history.append(row)
        if log and ddp.is_main():
            print(f"{desc} epoch {epoch + 1}/{spec.epochs}: loss {row['loss']:.4f}  train acc {row['train_accuracy']:.4f}  "
                  f"{row['time_s']:.1f}s", file=sys.stderr)
        if ckpt is not None and ddp.is_main():
            _save(run, model, ckpt, fp, epoch + 1, result)
        ddp.barrier()
    if run.averager is not None:
        run.sampler.set_epoch(spec.epochs)  # the same BatchNorm batches whether or not the run was resumed
        run.averager.finish(model, run.loader)
        result.swa_models = run.averager.count
    for cb in callbacks:
        cb.on_fit_end(model)
    if teacher is not None:
        teacher.train(teacher_was_training)
    return result


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """(1 - alpha) hard + alpha T^2 KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al. 2015,
    section 2: the T^2 keeps the soft term's gradients on the hard term's scale as T changes)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True)
    return (1 - alpha) * hard + alpha * t * t * soft


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | Iterable[Any], batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a dataset (or any iterable of labelled batches), in eval mode."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    loader = DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data
    correct = total = 0
    for batch in loader:
        x, y = _split(move(batch, device))
        pred = _logits(forward(model, x)).argmax(1)
        correct += int((pred == y).sum())
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise EffdnnError("evaluate: the test set is empty")
    return correct / total


@torch.no_grad()
def predictions(model: nn.Module, data: Dataset, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of every test example (to compare two models prediction by prediction)."""
    model.eval()
    device = model_device(model)
    out = [_logits(forward(model, move(batch_input(b), device))).argmax(1).cpu() for b in DataLoader(data, batch_size=batch_size)]
    return torch.cat(out)

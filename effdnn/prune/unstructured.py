"""Unstructured (single-weight) and N:M pruning: the ``prune`` block with a weight saliency as method.

    prune: {method: magnitude | taylor | obd, sparsity: 0.9, scope: layer | global,
            schedule: oneshot | iterative | agp, nm: "2:4", layers: [...], exclude: [...]}

The saliency (saliency.py) says which weights matter, the schedule (schedules.py) how many to cut at
each fine-tuning step, the mask (masks.py) where; the layers keep their masks (sparse.py) so pruned
weights stay zero through fine-tuning and export, and the cost model sees sparse storage.
"""
from __future__ import annotations

import itertools
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import EffdnnError
from ..registry import PRUNE, StrictModel
from ..train.config import TrainSpec
from .masks import check_sparsity, global_masks, nm_mask, topk_mask
from .saliency import weight_saliency
from .schedules import Plan
from .select import select_layers
from .sparse import MaskCallback, make_sparse


class UnstructuredConfig(StrictModel):
    """Element-wise pruning; ``method`` names the weight saliency."""

    method: Literal["magnitude", "taylor", "obd"] = "magnitude"
    sparsity: float | None = Field(None, description="fraction of weights removed, in [0, 1)")
    scope: Literal["layer", "global"] = "layer"
    layer_sparsity: dict[str, float] = Field(default_factory=dict, description="scope 'layer': pattern -> that layer's "
                                             "final sparsity (first match wins; the others get 'sparsity')")
    schedule: Literal["oneshot", "iterative", "agp"] = "oneshot"
    nm: str | None = Field(None, description="N:M pattern, e.g. '2:4' (keep N of every M); implies the sparsity")
    layers: list[str] | None = Field(None, description="fnmatch patterns of layers to prune (default: every conv / linear)")
    exclude: list[str] = Field(default_factory=list)
    batches: int = Field(8, ge=1, description="calibration batches for data-driven saliencies")
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    samples: int = Field(16, ge=1, description="Hutchinson probe vectors per batch")
    begin: float = Field(0.0, ge=0, lt=1, description="fraction of fine-tuning where a gradual schedule starts")
    end: float = Field(0.75, gt=0, le=1, description="fraction of fine-tuning where it reaches the final sparsity")
    steps: int = Field(10, ge=1, description="agp: pruning events; iterative: prune / fine-tune rounds")
    finetune: TrainSpec | None = Field(None, description="Python API only: fine-tuning during which a gradual schedule runs")

    @field_validator("sparsity")
    @classmethod
    def _range(cls, v: float | None) -> float | None:
        if v is not None and not (0.0 <= v < 1.0):
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "UnstructuredConfig":
        if self.nm is not None:
            n, m = parse_nm(self.nm)
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(f"nm {self.nm} means sparsity {1 - n / m:g}; drop 'sparsity' or make it agree")
            if self.scope == "global":
                raise ValueError("nm patterns are per group of M weights; scope 'global' does not apply")
        elif self.sparsity is None:
            raise ValueError("sparsity: required (or give an nm pattern)")
        if self.layer_sparsity and (self.scope != "layer" or self.nm is not None):
            raise ValueError("layer_sparsity: only with scope 'layer' and no nm pattern")
        for pat, v in self.layer_sparsity.items():
            if not 0.0 <= v < 1.0:
                raise ValueError(f"layer_sparsity[{pat!r}]: must be in [0, 1), got {v}")
        if self.end <= self.begin:
            raise ValueError("end must come after begin")
        return self

    @property
    def final_sparsity(self) -> float:
        if self.nm is not None:
            n, m = parse_nm(self.nm)
            return 1 - n / m
        return float(self.sparsity)


def parse_nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(t) for t in str(text).split(":"))
    except ValueError:
        raise ValueError(f"nm: expected 'N:M' like '2:4', got {text!r}") from None
    if not (1 <= n < m):
        raise ValueError(f"nm: needs 1 <= N < M, got {text!r}")
    return n, m


def compute_masks(model: nn.Module, layers: dict[str, nn.Module], config: UnstructuredConfig, sparsity: float,
                  data: Any = None) -> dict[str, torch.Tensor]:
    """Keep-masks at ``sparsity`` from ``config``'s saliency; weights pruned before stay pruned."""
    check_sparsity(sparsity)
    scores = weight_saliency(config.method, model, layers, data, batches=config.batches, hessian=config.hessian,
                             samples=config.samples)
    for n, m in layers.items():  # monotone schedules: an already-cut weight is cut first again
        old = getattr(m, "weight_mask", None)
        if old is not None:
            scores[n] = torch.where(old, scores[n].float(), torch.tensor(float("-inf"), device=old.device))
    if config.nm is not None:
        n_, m_ = parse_nm(config.nm)
        if sparsity <= 0:
            return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
        return {n: nm_mask(s, n_, m_) for n, s in scores.items()}
    tiebreak = {n: m.weight.detach().abs() for n, m in layers.items()}  # equal saliency: smaller |w| goes first
    if config.scope == "global":
        return global_masks(scores, sparsity, tiebreak)
    final = config.final_sparsity or 1.0
    return {n: topk_mask(s, layer_target(config, n) * sparsity / final if final else sparsity, tiebreak[n])
            for n, s in scores.items()}


def layer_target(config: UnstructuredConfig, name: str) -> float:
    """A layer's final sparsity: its first matching ``layer_sparsity`` pattern, else ``sparsity``."""
    for pat, v in config.layer_sparsity.items():
        if fnmatchcase(name, pat):
            return v
    return config.final_sparsity


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for n, m in layers.items():
        make_sparse(m, masks[n])


class ScheduledPruning(MaskCallback):
    """Prunes while fine-tuning runs: at each step the schedule's sparsity; masks only grow."""

    def __init__(self, layer_names: list[str], config: UnstructuredConfig, plan: Plan, data: list | None) -> None:
        super().__init__()
        self.names, self.config, self.plan, self.data = layer_names, config, plan, data
        self.step = 0
        self.current = -1.0
        self.history: list[tuple[int, float]] = []

    def update(self, model: nn.Module) -> None:
        s = self.plan.at(self.step)
        if s == self.current:
            return
        mods = dict(model.named_modules())
        layers = {n: mods[n] for n in self.names}
        apply_masks(layers, compute_masks(model, layers, self.config, s, self.data))
        self.current = s
        self.history.append((self.step, s))

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.update(model)
        super().on_fit_start(model, optimizer)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        self.update(model)
        super().after_step(model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "current": self.current, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.current, self.history = state["step"], state["current"], [tuple(h) for h in state["history"]]

    def report(self) -> dict[str, Any]:
        return {"prune_schedule": [{"step": t, "sparsity": round(s, 6)} for t, s in self.history]}


def _record(ctx: Any, names: list[str]) -> Any:
    def fin(model: nn.Module) -> nn.Module:
        mods = dict(model.named_modules())
        total = sum(mods[n].weight.numel() for n in names)
        zeros = sum(int((mods[n].weight == 0).sum()) for n in names)
        ctx.extra["pruned_layers_sparsity"] = zeros / max(total, 1)
        ctx.extra["pruned_layers"] = {n: float((mods[n].weight == 0).float().mean()) for n in names}
        return model
    return fin


def prune_unstructured(model: nn.Module, config: UnstructuredConfig, ctx: Any) -> nn.Module:
    """Prune single weights (or N:M groups) by the configured saliency and schedule."""
    layers = select_layers(model, config.layers, config.exclude)
    for pat in config.layer_sparsity:
        if not any(fnmatchcase(n, pat) for n in layers):
            raise EffdnnError(f"prune.layer_sparsity: pattern {pat!r} matches no pruned layer ({', '.join(layers)})")
    data = None
    if config.method != "magnitude":
        data = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
    ctx.finalizers.append(_record(ctx, list(layers)))
    if config.schedule == "oneshot":
        apply_masks(layers, compute_masks(model, layers, config, config.final_sparsity, data))
        ctx.callbacks.append(MaskCallback())
        return model
    spec = ctx.finetune
    if spec is not None and config.finetune is not None:
        raise EffdnnError("prune.finetune: in a recipe the schedule runs over the experiment's finetune block; drop prune.finetune")
    spec = spec or config.finetune
    if spec is None:
        raise EffdnnError(f"prune.schedule: {config.schedule!r} prunes during fine-tuning: add a finetune block "
                          "(recipe) or prune.finetune: {epochs: N} with labelled data (Python API)")
    total = ctx.steps_per_epoch(spec) * spec.epochs
    plan = Plan(config.schedule, config.final_sparsity, total, config.begin, config.end, config.steps)
    cb = ScheduledPruning(list(layers), config, plan, data)
    if ctx.finetune is not None:
        ctx.callbacks.append(cb)
        return model
    ctx.fit(model, spec, desc="prune", extra_callbacks=[cb])  # Python API: fine-tune here, on ``data``
    ctx.extra.update(cb.report())
    return model


for _name in ("magnitude", "taylor", "obd"):
    PRUNE.register(_name, UnstructuredConfig, summary=f"unstructured / N:M pruning by {_name} saliency")(prune_unstructured)

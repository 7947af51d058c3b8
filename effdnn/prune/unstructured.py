"""Unstructured (single-weight) and N:M pruning: the ``prune`` block with a weight saliency as method.

    prune: {method: magnitude | lamp | taylor | obd | wanda, sparsity: 0.9, scope: layer | global,
            schedule: oneshot | iterative | agp | rigl, nm: "2:4", layers: [...], exclude: [...], splice: false,
            regrow: 0.3}

The saliency (saliency.py) says which weights matter, the schedule (schedules.py) how many to cut at
each fine-tuning step, the mask (masks.py) where; the layers keep their masks (sparse.py) so pruned
weights stay zero through fine-tuning and export, and the cost model sees sparse storage.
"""
from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import EffdnnError
from ..transform import TransformContext
from ..registry import PRUNE, StrictModel
from ..train_spec import TrainSpec
from .masks import check_sparsity, global_masks, nm_mask, row_topk_mask, topk_mask
from .saliency import weight_saliency
from .rigl import RigL
from .schedules import Plan
from .select import check_ratio_patterns, layer_ratio, select_layers
from .sparse import MaskCallback, make_sparse


class UnstructuredConfig(StrictModel):
    """Element-wise pruning; ``method`` names the weight saliency."""

    method: Literal["magnitude", "lamp", "taylor", "obd", "wanda"] = "magnitude"
    sparsity: float | None = Field(None, description="fraction of weights removed, in [0, 1)")
    scope: Literal["layer", "global"] = "layer"
    compare: Literal["layer", "output"] | None = Field(None, description="scope 'layer': weights compete across the "
                                                        "layer, or within each output (row); default: output for "
                                                        "wanda (its comparison group), layer otherwise")
    layer_sparsity: dict[str, float] = Field(default_factory=dict, description="scope 'layer': pattern -> that layer's "
                                             "final sparsity (first match wins; the others get 'sparsity')")
    schedule: Literal["oneshot", "iterative", "agp", "rigl"] = "oneshot"
    nm: str | None = Field(None, description="N:M pattern, e.g. '2:4' (keep N of every M); implies the sparsity")
    layers: list[str] | None = Field(None, description="fnmatch patterns of layers to prune (default: every conv / linear)")
    exclude: list[str] = Field(default_factory=list)
    batches: int = Field(8, ge=1, description="calibration batches for data-driven saliencies")
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    samples: int = Field(16, ge=1, description="Hutchinson probe vectors per batch")
    begin: float = Field(0.0, ge=0, lt=1, description="fraction of fine-tuning where a gradual schedule starts")
    end: float = Field(0.75, gt=0, le=1, description="fraction of fine-tuning where it reaches the final sparsity")
    steps: int = Field(10, ge=1, description="agp: pruning events; iterative: prune / fine-tune rounds; rigl: mask updates")
    splice: bool = Field(False, description="gradual magnitude schedules: pruned weights keep learning and come back when "
                         "they outgrow kept ones, until 'end' (Dynamic Network Surgery)")
    regrow: float = Field(0.3, gt=0, le=1, description="rigl: fraction of each layer's weights moved at the first update "
                          "(alpha; cosine-annealed to 0 at 'end')")
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
        if self.compare == "output" and (self.scope != "layer" or self.nm is not None):
            raise ValueError("compare 'output': only with scope 'layer' and no nm pattern")
        if self.end <= self.begin:
            raise ValueError("end must come after begin")
        if self.splice and (self.method != "magnitude" or self.schedule not in ("agp", "iterative") or self.nm is not None):
            raise ValueError("splice: only with method 'magnitude', a gradual schedule (agp / iterative) and no nm pattern")
        if self.schedule == "rigl" and self.nm is not None:
            raise ValueError("schedule 'rigl' moves single weights; it does not keep an nm pattern")
        if "regrow" in self.model_fields_set and self.schedule != "rigl":
            raise ValueError("regrow: only with schedule 'rigl'")
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
                  data: Any = None, dense: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks at ``sparsity`` from ``config``'s saliency; weights pruned before stay pruned, unless
    ``dense`` (splicing) gives the weights' unmasked values, whose magnitudes then rank every weight again."""
    check_sparsity(sparsity)
    if dense is not None:
        scores = {n: dense[n].abs() for n in layers}
    else:
        scores = weight_saliency(config.method, model, layers, data, batches=config.batches, hessian=config.hessian,
                                 samples=config.samples)
    for n, m in layers.items():  # monotone schedules: an already-cut weight is cut first again
        old = getattr(m, "weight_mask", None)
        if old is not None and dense is None:
            scores[n] = torch.where(old, scores[n].float(), torch.tensor(float("-inf"), device=old.device))
    if config.nm is not None:
        n_, m_ = parse_nm(config.nm)
        if sparsity <= 0:
            return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
        return {n: nm_mask(s, n_, m_) for n, s in scores.items()}
    tiebreak = {n: (dense[n] if dense is not None else m.weight).detach().abs()  # equal saliency: smaller |w| goes first
                for n, m in layers.items()}
    if config.scope == "global":
        return global_masks(scores, sparsity, tiebreak)
    final = config.final_sparsity or 1.0
    per_output = (config.compare or ("output" if config.method == "wanda" else "layer")) == "output"
    mask = row_topk_mask if per_output else topk_mask
    return {n: mask(s, layer_target(config, n) * sparsity / final if final else sparsity, tiebreak[n])
            for n, s in scores.items()}


def layer_target(config: UnstructuredConfig, name: str) -> float:
    """A layer's final sparsity: its first matching ``layer_sparsity`` pattern, else ``sparsity``."""
    return layer_ratio(config.layer_sparsity, [name], config.final_sparsity)


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for n, m in layers.items():
        make_sparse(m, masks[n])


class ScheduledPruning(MaskCallback):
    """Prunes while fine-tuning runs: at each step the schedule's sparsity; masks only grow.

    With ``splice`` (Dynamic Network Surgery, Guo, Yao & Chen 2016, eq. 2-3) a pruned weight is not
    gone: the forward pass uses W * T, kept weights take the optimizer's step, cut ones the paper's
    plain gradient step W -= lr * dL/d(W * T) (an adaptive optimizer's normalised step would move every
    cut weight by ~lr whatever its gradient), and each pruning event ranks all of W by |W| again, so a
    cut weight that grows past a kept one is spliced back (one magnitude threshold per event, where the
    paper uses a band of two). The unmasked W lives here; the layer holds W * T, so evaluation and
    export see the pruned model. From ``end`` on the mask is frozen and fine-tuning proceeds as without
    splicing."""

    def __init__(self, layer_names: list[str], config: UnstructuredConfig, plan: Plan, data: list | None) -> None:
        super().__init__()
        self.names, self.config, self.plan, self.data = layer_names, config, plan, data
        self.step = 0
        self.current = -1.0
        self.history: list[tuple[int, float]] = []
        self.dense: dict[str, torch.Tensor] = {}  # splicing: the unmasked weights, until the mask freezes
        self.spliced = 0  # weights brought back by splicing, over the run

    def _layers(self, model: nn.Module) -> dict[str, nn.Module]:
        mods = dict(model.named_modules())
        return {n: mods[n] for n in self.names}

    def _splicing(self) -> bool:
        return self.config.splice and self.step < self.plan.span()[1]

    def update(self, model: nn.Module) -> None:
        s = self.plan.at(self.step)
        if s == self.current:
            return
        layers = self._layers(model)
        masks = compute_masks(model, layers, self.config, s, self.data, self.dense or None)
        if self.dense:  # splicing: count the cut weights that come back, and give them their unmasked values
            for n, m in layers.items():
                if hasattr(m, "weight_mask"):  # not before the first event
                    self.spliced += int((masks[n] & ~m.weight_mask).sum())
                with torch.no_grad():
                    m.weight.copy_(self.dense[n])
        apply_masks(layers, masks)
        self.current = s
        self.history.append((self.step, s))

    def mask_grads(self) -> bool:
        return not self._splicing()

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self._splicing() and not self.dense:
            self.dense = {n: m.weight.detach().clone() for n, m in self._layers(model).items()}
        self.update(model)
        super().on_fit_start(model, optimizer)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.dense:  # kept entries: the optimizer's step; cut ones: W -= lr * dL/d(W*T) (DNS eq. 3)
            lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
            for n, m in self._layers(model).items():
                g = m.weight.grad
                cut = self.dense[n] if g is None else self.dense[n] - lr[id(m.weight)] * g.detach()
                self.dense[n] = torch.where(m.weight_mask, m.weight.detach(), cut)
        self.step += 1
        self.update(model)
        if self.dense and not self._splicing():
            self.dense = {}  # the mask is final: pruned weights stay zero from here
        super().after_step(model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "current": self.current, "history": self.history, "dense": self.dense,
                "spliced": self.spliced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.current, self.history = state["step"], state["current"], [tuple(h) for h in state["history"]]
        self.dense, self.spliced = state.get("dense", {}), state.get("spliced", 0)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prune_schedule": [{"step": t, "sparsity": round(s, 6)} for t, s in self.history]}
        if self.config.splice:
            out["spliced_weights"] = self.spliced
        return out


def record_sparsity(ctx: TransformContext, names: list[str]) -> Any:
    def fin(model: nn.Module) -> nn.Module:
        mods = dict(model.named_modules())
        total = sum(mods[n].weight.numel() for n in names)
        zeros = sum(int((mods[n].weight == 0).sum()) for n in names)
        ctx.extra["pruned_layers_sparsity"] = zeros / max(total, 1)
        ctx.extra["pruned_layers"] = {n: float((mods[n].weight == 0).float().mean()) for n in names}
        return model
    return fin


def prune_unstructured(model: nn.Module, config: UnstructuredConfig, ctx: TransformContext) -> nn.Module:
    """Prune single weights (or N:M groups) by the configured saliency and schedule."""
    layers = select_layers(model, config.layers, config.exclude)
    check_ratio_patterns(config.layer_sparsity, layers)
    data = None
    if config.method not in ("magnitude", "lamp"):
        data = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
        if config.method == "wanda" and not data:
            raise EffdnnError("wanda: it is calibrated on data: pass data=<batches> (or run it in a recipe)")
    ctx.finalizers.append(record_sparsity(ctx, list(layers)))
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
    per_epoch = ctx.steps_per_epoch(spec)
    plan = Plan(config.schedule, config.final_sparsity, per_epoch * spec.epochs, config.begin, config.end, config.steps)
    if spec.swa is not None and plan.span()[1] > per_epoch * spec.schedule_epochs:
        raise EffdnnError(f"prune.end: the {config.schedule} schedule changes the masks until {config.end:g} of the "
                          f"run, inside the last {spec.swa.epochs} (SWA) epochs; the averaged weights need the final "
                          "mask: lower end")
    cb: MaskCallback
    if config.schedule == "rigl":  # the final sparsity from the start, then connections move (rigl.py)
        apply_masks(layers, compute_masks(model, layers, config, config.final_sparsity, data))
        cb = RigL(list(layers), config.regrow, plan.span(), config.steps)
    else:
        cb = ScheduledPruning(list(layers), config, plan, data)
    if ctx.finetune is not None:
        ctx.callbacks.append(cb)
        return model
    ctx.fit(model, spec, desc="prune", extra_callbacks=[cb])  # Python API: fine-tune here, on ``data``
    ctx.extra.update(cb.report())
    return model


for _name in ("magnitude", "lamp", "taylor", "obd"):
    PRUNE.register(_name, UnstructuredConfig, summary=f"unstructured / N:M pruning by {_name} saliency")(prune_unstructured)

"""Structured pruning: remove whole channels and return a smaller dense model.

    prune: {method: channel, saliency: l1 | group_l1 | bn_gamma | taylor | magnitude | obd, sparsity: 0.5, round_to: 1,
            scope: group | global, layer_sparsity: {"features.0": 0.5}, grouped: narrower | fewer | nearest,
            bn_recalibration: 16, strict: false}

One forward pass, traced at the aten level (graph.py, rules.py), says which parameter dimensions must
shrink together; groups.py turns that into *units* (what is removed at once: a channel with every
weight that touches it, through norms, residual adds, SE gates, concatenations and splits, channel
shuffles, reshapes and permutes, depthwise and grouped convolutions (narrower groups by default, as DepGraph; or fewer groups, or
whichever comes nearest the ratio: ``grouped``), LayerNorm,
embeddings, whole attention heads, class tokens / position embeddings / layer scales) and *groups* (units that share
their producer layers: one ratio applies to them). Units reaching the model input or output, or an op
no rule knows, stay, and a group left whole says so in one warning line (``strict: true``: an error).
Each group loses the ``sparsity`` fraction (or its ``layer_sparsity`` entry's) of its units with the
lowest saliency (``scope: global``: one threshold over every group's saliencies, each over its group's
mean, as DepGraph's global ranking) (summed over the unit's output channels of its producers; ``group_l1`` scores every
weight the unit holds); surgery.py slices every parameter and fixes the modules' size attributes;
the pruned model is run once to check it keeps its output shape. ``bn_recalibration: n`` then
re-estimates every BatchNorm's running statistics on n calibration batches (EagleEye's adaptive BN,
Li et al. 2020). The report gives the requested and achieved channel and MAC reductions.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import EffdnnError
from ..registry import PRUNE, StrictModel
from ..transform import TransformContext
from ..utils.batches import batch_input, head, model_device, move
from ..utils.batchnorm import recalibrate_batchnorm
from .attention import set_head_counts
from .graph import eval_mode, trace_graph
from .grouped import GroupedPolicy
from .groups import Coupling, Group, couple
from .masks import channel_keep
from .saliency import channel_saliency
from .select import check_ratio_patterns, layer_ratio, select_layers
from .surgery import remove_units

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class ChannelGroup:
    """A group as the report and tests see it: producers, norms, consumers (module names)."""
    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[tuple[str, str]] = field(default_factory=list)  # (norm module, the producer it follows or "")
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, columns per channel)
    blocked: list[str] = field(default_factory=list)


def analyse(model: nn.Module, example_input: Any) -> Coupling:
    """Trace ``model`` once and couple its dimensions (graph.py + groups.py)."""
    graph, _ = trace_graph(model, example_input)
    return couple(graph)


def _members(coup: Coupling, g: Group, model: nn.Module) -> ChannelGroup:
    units = np.asarray(g.all_units)
    mods = dict(model.named_modules())
    out = ChannelGroup(g.size, list(g.producers), blocked=[g.blocked] if g.blocked else [])
    for mname, slots in coup.slot_nodes.items():
        for s, comps in slots:
            hit = np.isin(comps, units)
            if not hit.any() or s.param != "weight":
                continue
            if isinstance(mods[mname], _NORMS) and s.dim == 0:
                out.norms.append((mname, ""))
            elif s.dim == 1 and mname not in g.producers or (s.dim == 1 and mname in g.producers and not s.producer):
                out.consumers.append((mname, max(1, int(hit.sum()) // max(1, len(units)))))
    return out


def channel_groups(model: nn.Module, example_input: Any) -> list[ChannelGroup]:
    """The channel groups of ``model`` (one traced forward pass on ``example_input``)."""
    coup = analyse(model, example_input)
    return [_members(coup, g, model) for g in coup.groups]


class StructuredConfig(StrictModel):
    """Channel (filter) pruning with physical removal."""

    method: Literal["channel"] = "channel"
    saliency: Literal["l1", "group_l1", "bn_gamma", "taylor", "magnitude", "taylor_weight", "obd"] = "l1"
    sparsity: float = Field(..., ge=0, lt=1, description="fraction of each group's channels removed")
    layer_sparsity: dict[str, float] = Field(default_factory=dict, description="pattern -> fraction of channels removed "
                                             "from the groups it matches a producer of (first match wins; the others "
                                             "get 'sparsity')")
    scope: Literal["group", "global"] = Field("group", description="group: every group loses 'sparsity' of its "
                                             "channels; global: one threshold over all groups' saliencies, each "
                                             "over its group's mean (at least one channel per group stays)")
    round_to: int = Field(1, ge=1, description="kept channels rounded up to a multiple of this")
    grouped: GroupedPolicy = Field("narrower", description="grouped convolutions (more than one input channel per "
                                   "group) lose the same positions in every group (narrower, as DepGraph), whole "
                                   "groups (fewer), or whichever removed share is the smallest reaching the ratio "
                                   "(nearest); each rounds up, so never less than asked")
    layers: list[str] | None = Field(None, description="patterns: a group is pruned only if all its producers match")
    exclude: list[str] = Field(default_factory=list)
    batches: int = Field(8, ge=1)
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    samples: int = Field(8, ge=1)
    strict: bool = Field(False, description="a group kept whole (an op no rule follows, ...) is an error, not a warning")
    bn_recalibration: int = Field(0, ge=0, description="after the surgery, re-estimate every BatchNorm's running "
                                  "statistics on this many calibration batches (EagleEye's adaptive BN); 0: off")

    @field_validator("layer_sparsity")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for pat, r in v.items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"[{pat!r}]: must be in [0, 1), got {r}")
        return v

    @model_validator(mode="after")
    def _global_ratios(self) -> StructuredConfig:
        if self.scope == "global" and self.layer_sparsity:
            raise ValueError("layer_sparsity sets per-group ratios: use it with scope: group, not global")
        return self


def _norm_after(coup: Coupling, model: nn.Module, producers: dict[str, nn.Module]) -> dict[str, nn.Module | None]:
    """The BatchNorm whose channels are a producer's outputs, index by index (for ``bn_gamma``)."""
    mods = dict(model.named_modules())
    out_comps = {m: c for m in producers for s, c in coup.slot_nodes[m] if s.producer}
    norms: dict[bytes, nn.Module] = {}  # a BatchNorm by its weight's components (the first one on a tie)
    for m, slots in coup.slot_nodes.items():
        if isinstance(mods.get(m), nn.modules.batchnorm._BatchNorm):
            for s, c in slots:
                if s.param == "weight":
                    norms.setdefault(c.astype(np.int64).tobytes(), mods[m])
    return {p: norms.get(oc.astype(np.int64).tobytes()) for p, oc in out_comps.items()}


def _group_l1_scores(coup: Coupling, model: nn.Module) -> np.ndarray:
    """Per unit: the L1 norm of every weight slice it holds (conv / linear / norm weights), each term
    over its mean in that slice's layer (layers of different scale weigh alike): DepGraph's group norm."""
    mods = dict(model.named_modules())
    score = np.zeros(int(coup.comp.max()) + 1)
    for mname, slots in coup.slot_nodes.items():
        for s, comps in slots:
            if s.param != "weight" or s.dim > 1 or not isinstance(mods.get(mname), _NORMS + (nn.Linear, nn.modules.conv._ConvNd)):
                continue
            w = mods[mname].weight.detach().abs().float()
            term = w.sum([d for d in range(w.dim()) if d != s.dim]).cpu().numpy() if w.dim() > 1 else w.cpu().numpy()
            np.add.at(score, comps, term / max(float(term.mean()), 1e-12))
    return score


def _unit_scores(coup: Coupling, model: nn.Module, todo: list[Group], config: StructuredConfig, data: Any) -> np.ndarray:
    if config.saliency == "group_l1":
        return _group_l1_scores(coup, model)
    mods = dict(model.named_modules())
    producers = {p: mods[p] for g in todo for p in g.producers}
    score = np.zeros(int(coup.comp.max()) + 1)
    if not producers:
        return score
    scores = channel_saliency(config.saliency, model, producers, _norm_after(coup, model, producers), data,
                              batches=config.batches, hessian=config.hessian, samples=config.samples)
    for p in producers:
        comps = next(c for s, c in coup.slot_nodes[p] if s.producer)
        np.add.at(score, comps, scores[p].float().cpu().numpy())
    return score


def _macs(model: nn.Module, x: Any) -> float:
    from ..cost import cost

    try:
        return float(cost(model, x).macs)
    except Exception:  # noqa: BLE001 (the MACs inform; a model the cost tracer cannot follow still prunes)
        return float("nan")


def _out_shapes(out: Any) -> list:
    from torch.utils._pytree import tree_flatten

    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _run(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, (tuple, list)) else model(x)


def global_ratios(groups: list[Group], score: np.ndarray, sparsity: float) -> list[float]:
    """scope: global: each group's unit saliencies over their mean, one threshold over all of them
    removing ``sparsity`` of all units (the lowest first; a group keeps at least one); returns the
    fraction each group loses."""
    norm = [score[np.asarray(g.units)] / max(float(score[np.asarray(g.units)].mean()), 1e-12) for g in groups]
    flat = np.concatenate(norm) if norm else np.zeros(0)
    owner = np.concatenate([np.full(len(n), i) for i, n in enumerate(norm)]) if norm else np.zeros(0, dtype=int)
    left = np.array([len(n) for n in norm])
    gone = np.zeros(len(norm), dtype=int)
    want = round(sparsity * len(flat))
    for i in np.argsort(flat, kind="stable"):
        if want == 0:
            break
        if left[owner[i]] > 1:
            left[owner[i]] -= 1
            gone[owner[i]] += 1
            want -= 1
    return [gone[i] / max(len(n), 1) for i, n in enumerate(norm)]


def prune_channels(model: nn.Module, example_input: torch.Tensor, config: StructuredConfig, data: Any = None,
                   measure: bool = True) -> dict[str, Any]:
    """Remove channels in place; returns what was done (groups, channels before / after, groups kept whole,
    requested and achieved channel reductions, and with ``measure`` the MACs before / after)."""
    with eval_mode(model):
        return _prune_channels(model, example_input, config, data, measure)


def _prune_channels(model: nn.Module, example_input: Any, config: StructuredConfig, data: Any,
                    measure: bool) -> dict[str, Any]:
    graph, out = trace_graph(model, example_input,  # one line if the model does not run
                             lambda name: layer_ratio(config.layer_sparsity, [name], config.sparsity), config.grouped)
    want = _out_shapes(out)
    coup = couple(graph)
    macs_before = _macs(model, example_input) if measure else float("nan")
    selected = set(select_layers(model, config.layers, config.exclude, "prune"))
    todo = [g for g in coup.groups if g.units and all(p in selected for p in g.producers)]
    check_ratio_patterns(config.layer_sparsity, [p for g in todo for p in g.producers])
    score = _unit_scores(coup, model, todo, config, data)
    ratios = global_ratios(todo, score, config.sparsity) if config.scope == "global" else \
        [layer_ratio(config.layer_sparsity, g.producers, config.sparsity) for g in todo]
    removed = np.zeros(len(score), dtype=bool)
    coarse = np.zeros(len(score), dtype=bool)  # units of grouped convolutions: never less than asked (grouped.py)
    coarse[coup.comp[graph.coarse]] = True
    done = []
    for g, ratio in zip(todo, ratios):
        units = np.asarray(g.units)
        keep = channel_keep(torch.as_tensor(score[units]), ratio, config.round_to,
                            at_least=bool(coarse[units].any())).numpy()
        gone = np.setdiff1d(np.arange(len(units)), keep)
        removed[units[gone]] = True
        done.append({"producers": g.producers, "channels": g.size, "kept": int(g.size - len(gone))})
    whole = [{"producers": g.producers, "channels": g.size, "why": g.blocked or "not selected"}
             for g in coup.groups if g not in todo]
    _say_whole(whole, config.strict)
    set_head_counts(model, graph.heads, coup.comp, removed)
    remove_units(model, coup.slot_nodes, removed, graph.narrow)
    _fix_models(model)
    try:
        got = _out_shapes(_run(model, example_input))
    except Exception as e:  # noqa: BLE001 (any failure of user code is reported in one line)
        raise EffdnnError(f"structured pruning: the pruned model does not run ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if got != want:
        raise EffdnnError(f"structured pruning: the pruned model's output shape {got} differs from {want}")
    return _summary(model, example_input if measure else None, done, whole, config, macs_before)


def _say_whole(whole: list[dict], strict: bool) -> None:
    """One warning line per group kept whole for a reason other than the model output (strict: an error)."""
    for w in whole:
        if w["why"] in ("model output", "not selected"):
            continue
        names = ", ".join(w["producers"][:3]) + (f" (+{len(w['producers']) - 3})" if len(w["producers"]) > 3 else "")
        msg = f"structured pruning: kept whole {names} ({w['channels']} channels): {w['why']}"
        if strict:
            raise EffdnnError(msg + " (strict: true)")
        warnings.warn(msg, stacklevel=3)


def _summary(model: nn.Module, x: Any, done: list[dict], whole: list[dict],
             config: StructuredConfig, macs_before: float) -> dict[str, Any]:
    total = sum(g["channels"] for g in done) + sum(w["channels"] for w in whole)
    kept = sum(g["kept"] for g in done) + sum(w["channels"] for w in whole)
    macs_after = _macs(model, x) if x is not None else float("nan")
    return {"groups": done, "kept_whole": whole, "requested_channel_reduction": config.sparsity,
            "achieved_channel_reduction": 1 - kept / max(total, 1), "macs_before": macs_before,
            "macs_after": macs_after, "mac_reduction": macs_before / macs_after if macs_after else float("nan")}


def _fix_models(model: nn.Module) -> None:
    """A size attribute torchvision's ViT keeps outside its layers (its patch embedding width)."""
    for mod in model.modules():
        if type(mod).__name__ == "VisionTransformer" and hasattr(mod, "conv_proj"):
            mod.hidden_dim = mod.conv_proj.out_channels


def structured_transform(model: nn.Module, config: StructuredConfig, ctx: TransformContext) -> nn.Module:
    """Remove whole channels by a channel saliency; the result is a smaller dense model."""
    calib = None
    if ctx.has_data():
        example = ctx.example_input(8)
    else:
        calib = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
        example = move(head(batch_input(calib[0]), 8), model_device(model))  # a tensor or a dict (Hugging Face)
    if config.saliency not in ("l1", "group_l1", "bn_gamma") and calib is None:
        calib = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
    info = prune_channels(model, example, config, calib)
    if config.bn_recalibration:
        info["bn_recalibration_batches"] = recalibrate_batchnorm(model, ctx.calib_loader(config.bn_recalibration),
                                                                 config.bn_recalibration)
    ctx.extra["structured"] = info
    return model


PRUNE.register("channel", StructuredConfig, summary="structured pruning: remove channels (filters) physically")(structured_transform)

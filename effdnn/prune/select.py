"""Which layers a pruning block touches: name patterns (fnmatch) over the weight-bearing layers."""
from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn

from ..errors import EffdnnError
from ..utils.layer_patterns import check_patterns, first_match, select

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every convolution and linear layer, by qualified name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def select_layers(model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  what: str = "prune") -> dict[str, nn.Module]:
    """Layers whose names match one of ``include`` (all if None) and none of ``exclude``.

    A pattern that matches no layer is an error (a typo must not silently prune nothing)."""
    layers = weight_layers(model)
    if not layers:
        raise EffdnnError(f"{what}: the model has no convolution or linear layer to prune")
    chosen = select(layers, include, exclude, what)
    if not chosen:
        raise EffdnnError(f"{what}: the layer patterns leave no layer to prune")
    return chosen


def layer_ratio(ratios: dict[str, float], names: Iterable[str], default: float) -> float:
    """Per-layer ratios (``layer_sparsity``): the value of the first pattern matching one of ``names``
    (a layer, or the producers of a channel group), else ``default``."""
    return first_match(ratios, names, default)


def check_ratio_patterns(ratios: dict[str, float], names: Iterable[str], what: str = "prune.layer_sparsity") -> None:
    """Every pattern of ``ratios`` must match one of ``names`` (a typo must not silently change nothing)."""
    check_patterns(ratios, list(names), what, "pruned layer")

"""Grouped convolutions in the dependency trace: fewer groups, or narrower groups.

A convolution with ``groups`` G > 1 (and more than one input channel per group) can lose channels in
two ways that keep it a valid grouped convolution:

- *fewer groups*: a group's input and output channels go whole (G shrinks and stays a divisor);
- *narrower groups*: the same positions go in every group: input position j of every group with the
  kernel's input column j, and output position j' of every group (G stays; channels per group
  shrink; inputs and outputs are separate units, as for a dense convolution).

Either way a unit is coarse (a whole group, or one position in each of the G groups), so rounding
the count to the nearest can fall short of the ratio r asked by half a unit (RegNetY-400MF's 55
groups at 30%: 16 groups, 29.1%). Units of a grouped convolution (depthwise ones, one input channel
per group, excepted: their units are single channels) are therefore removed by ceil(n r), at most
n - 1 (:func:`removed_share`): never less than requested. Which split, by the ``grouped`` policy
(:func:`prefer_narrow`):

- ``narrower`` (default): narrower groups wherever a group has more than one input channel; what
  DepGraph (Fang et al. 2023) does. The group count and the kernels' layout stay, and the grouped
  convolution's MACs fall with the square of its width, as a dense one's; the removed share can
  exceed r by up to one position per group (3 of 8 = 37.5% at r = 0.3);
- ``fewer``: whole groups (G shrinks; MACs fall linearly in the grouped convolution);
- ``nearest``: the split whose removed share is the smallest that reaches r (narrower on a tie; where
  neither reaches r, as a group must stay, the larger share): closest to the request.

The report's requested and achieved channel reductions show the difference. Fewer groups are what one
pruned channel of a depthwise convolution is.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .graph import Recorder


@dataclass
class GroupedConv:
    """A grouped convolution's labels: input channels, kernel input positions, output channels."""
    module: str
    groups: int
    xin: torch.Tensor | None  # (C_in,) labels of the input's channels
    win: torch.Tensor | None  # (C_in / G,) labels of the kernel's input dim
    wout: torch.Tensor | None  # (C_out,) labels of the kernel's output dim


def removed_count(n: int, r: float) -> int:
    """Units removed of ``n`` coarse units at ratio ``r``: never less than asked, one always kept."""
    return max(0, min(n - 1, math.ceil(n * r - 1e-9)))


def removed_share(n: int, r: float) -> float:
    return removed_count(n, r) / n


GroupedPolicy = Literal["narrower", "fewer", "nearest"]


def prefer_narrow(groups: int, per_in: int, r: float, policy: GroupedPolicy = "narrower") -> bool:
    """Whether narrower groups are chosen over fewer groups at ratio ``r`` (a depthwise convolution,
    one input per group, can only lose whole groups). ``nearest``: the smaller removed share that
    reaches ``r``, narrower on a tie; neither reaching it, the larger."""
    if per_in <= 1:
        return False
    if policy != "nearest":
        return policy == "narrower"
    fewer, narrower = removed_share(groups, r), removed_share(per_in, r)
    reach_f, reach_n = fewer >= r - 1e-9, narrower >= r - 1e-9
    if reach_f and reach_n:
        return narrower <= fewer
    if reach_f or reach_n:
        return reach_n
    return narrower >= fewer


def resolve_grouped(rec: Recorder, ratio: Callable[[str], float],
                    policy: GroupedPolicy = "narrower") -> tuple[set[str], np.ndarray]:
    """Join each recorded grouped convolution's labels by the split chosen; returns the narrowed ones
    and the labels whose units are coarse (rounded up: :func:`removed_count`)."""
    narrow: set[str] = set()
    coarse: list[torch.Tensor] = []
    for g in rec.grouped:
        per_in = g.win.numel() if g.win is not None else 1
        if g.xin is not None and g.win is not None and g.wout is not None and \
                prefer_narrow(g.groups, per_in, ratio(g.module), policy):
            cols = g.xin.reshape(g.groups, -1)
            rec.union(cols, cols[:1])
            rec.union(cols[0], g.win)
            outs = g.wout.reshape(g.groups, -1)
            rec.union(outs, outs[:1])
            narrow.add(g.module)
            coarse += [g.xin.reshape(-1), g.wout.reshape(-1)]
            continue
        if g.win is not None:
            rec.block(g.win, "grouped convolution kernel input dim")
        if g.wout is None:  # an unlabelled kernel: its input channels stay
            if g.xin is not None:
                rec.block(g.xin, "grouped convolution with an unlabelled kernel")
            continue
        rows = [t.reshape(g.groups, -1) for t in (g.wout, g.xin) if t is not None]
        joined = torch.cat(rows, 1)
        rec.union(joined, joined[:, :1])
        if per_in > 1:
            coarse.append(g.wout.reshape(-1))
    rec.grouped = []
    nodes = torch.cat(coarse).numpy() if coarse else np.zeros(0, dtype=np.int64)
    return narrow, nodes[nodes >= 0]

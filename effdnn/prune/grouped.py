"""Grouped convolutions in the dependency trace: fewer groups, or narrower groups.

A convolution with ``groups`` G > 1 (and more than one input channel per group) can lose channels in
two ways that keep it a valid grouped convolution:

- *fewer groups*: a group's input and output channels go whole (G shrinks and stays a divisor);
- *narrower groups*: the same positions go in every group: input position j of every group with the
  kernel's input column j, and output position j' of every group (G stays; channels per group
  shrink; inputs and outputs are separate units, as for a dense convolution).

The trace records each grouped convolution and decides after the pass, by the ratio r to be removed
there: the split whose share of removed channels (kept counts rounded as everywhere: n - round(n r),
at least one) comes closer to r, narrower groups on a tie (a depthwise convolution, one input per
group, can only lose whole groups). Narrower groups are what DepGraph (Fang et al. 2023) does for
grouped convolutions; fewer groups are what one pruned channel of a depthwise one is.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def _kept(n: int, r: float) -> int:
    return max(1, n - round(n * r))  # as masks.channel_keep


def narrow_is_closer(groups: int, per_in: int, per_out: int, r: float) -> bool:
    """Whether narrower groups come at least as close as fewer groups to removing the ratio ``r`` of the
    convolution's channels (input side; a depthwise convolution can only lose whole groups)."""
    fewer = 1 - _kept(groups, r) / groups
    narrower = 1 - _kept(per_in, r) / per_in
    return per_in > 1 and abs(narrower - r) <= abs(fewer - r)


def resolve_grouped(rec: Recorder, ratio: Callable[[str], float]) -> set[str]:
    """Join each recorded grouped convolution's labels by the split chosen; returns the narrowed ones."""
    narrow: set[str] = set()
    for g in rec.grouped:
        per_in = g.win.numel() if g.win is not None else 1
        per_out = g.wout.numel() // g.groups if g.wout is not None else 1
        if g.xin is not None and g.win is not None and g.wout is not None and \
                narrow_is_closer(g.groups, per_in, per_out, ratio(g.module)):
            cols = g.xin.reshape(g.groups, -1)
            rec.union(cols, cols[:1])
            rec.union(cols[0], g.win)
            outs = g.wout.reshape(g.groups, -1)
            rec.union(outs, outs[:1])
            narrow.add(g.module)
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
    rec.grouped = []
    return narrow

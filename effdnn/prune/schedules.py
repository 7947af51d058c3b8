"""How much to cut when: sparsity as a function of the fine-tuning step.

- ``oneshot``: the final sparsity from the start.
- ``iterative``: prune / fine-tune rounds (Han et al. 2015, section 3.3): ``rounds`` equal stretches of
  fine-tuning, the sparsity after round k being 1 - (1 - s_f)^(k / rounds) (each round removes the
  same fraction of the weights still there).
- ``agp``: automated gradual pruning (Zhu & Gupta 2017, eq. 1):
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t in {t0, t0 + dt, ..., t0 + n dt}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..errors import EffdnnError


def agp_sparsity(step: int, final: float, initial: float = 0.0, start: int = 0, n: int = 10, dt: int = 1) -> float:
    """Zhu & Gupta's cubic schedule at training step ``step``: updated every ``dt`` steps, ``n`` times."""
    if n < 1 or dt < 1:
        raise EffdnnError(f"agp: needs n >= 1 pruning steps and a frequency dt >= 1 (got n={n}, dt={dt})")
    if step < start:
        return 0.0
    k = min((step - start) // dt, n)  # pruning events so far (the mask changes only at t0 + k dt)
    return final + (initial - final) * (1.0 - k / n) ** 3


def iterative_sparsity(round_index: int, final: float, rounds: int) -> float:
    """Sparsity after round ``round_index`` (1-based) of ``rounds`` equal prune / fine-tune rounds."""
    if rounds < 1:
        raise EffdnnError(f"iterative: needs rounds >= 1, got {rounds}")
    k = min(max(round_index, 0), rounds)
    return 1.0 - (1.0 - final) ** (k / rounds)


@dataclass(frozen=True)
class Plan:
    """Sparsity at each step of a fine-tuning run of ``total_steps`` steps (``at(step)``)."""

    kind: str
    final: float
    total_steps: int
    begin: float = 0.0  # fraction of the fine-tuning where pruning starts
    end: float = 0.75  # fraction where it reaches ``final`` (the rest fine-tunes the final mask)
    steps: int = 10  # agp: pruning events; iterative: rounds

    def span(self) -> tuple[int, int]:
        """(first, last) step of the pruning phase: ``begin`` and ``end`` as step numbers."""
        t0 = int(math.floor(self.begin * self.total_steps))
        t1 = max(int(math.floor(self.end * self.total_steps)), t0 + 1)
        return t0, t1

    def at(self, step: int) -> float:
        return SCHEDULES[self.kind](self, step)


def _oneshot(p: Plan, step: int) -> float:
    return p.final


def _iterative(p: Plan, step: int) -> float:
    t0, t1 = p.span()
    if step < t0:
        return 0.0
    length = (t1 - t0) / p.steps  # round k (1-based) prunes at t0 + (k - 1) * length
    return iterative_sparsity(int((step - t0) // length) + 1 if length > 0 else p.steps, p.final, p.steps)


def _agp(p: Plan, step: int) -> float:
    t0, t1 = p.span()
    n = max(min(p.steps, t1 - t0), 1)  # a short run gets fewer, but still whole, pruning events
    return agp_sparsity(step, p.final, 0.0, t0, n, (t1 - t0) // n)


# rigl: the final sparsity throughout; its mask updates (rigl.py) run over span()
SCHEDULES: dict[str, Callable[[Plan, int], float]] = {"oneshot": _oneshot, "iterative": _iterative, "agp": _agp,
                                                     "rigl": _oneshot}

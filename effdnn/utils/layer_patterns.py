"""The one layer-pattern language of every block: fnmatch patterns over qualified module names, plus
the keywords ``first`` and ``last`` (the first / last layer of the block's candidate layers).

``keep_fp: ["lyr.*"]``, ``layers: ["features.*"]``, ``exclude: [last]`` and per-layer override keys all
mean the same thing in quant, prune and activation sparsity. A pattern that matches no candidate is an
error everywhere: a typo must never silently change nothing.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Mapping, Sequence, TypeVar

from ..errors import EffdnnError

T = TypeVar("T")


def matches(name: str, patterns: Iterable[str], first: str | None = None, last: str | None = None) -> bool:
    """Whether ``name`` matches one of ``patterns`` (fnmatch, or the keywords ``first`` / ``last``)."""
    for p in patterns:
        if (p == "first" and name == first) or (p == "last" and name == last) or fnmatchcase(name, p):
            return True
    return False


def check_patterns(patterns: Iterable[str], names: Sequence[str], where: str, kind: str = "layer") -> None:
    """Raise one line naming the first pattern that matches none of ``names`` (the candidates)."""
    names = list(names)
    first, last = (names[0], names[-1]) if names else (None, None)
    for p in patterns:
        if not any(matches(n, [p], first, last) for n in names):
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            raise EffdnnError(f"{where}: pattern {p!r} matches no {kind} (candidates: {shown or 'none'})")


def select(candidates: Mapping[str, T], include: Sequence[str] | None, exclude: Sequence[str], where: str,
           kind: str = "layer") -> dict[str, T]:
    """The candidates matching one of ``include`` (all when None) and none of ``exclude``; every pattern
    must match a candidate (``where.layers`` / ``where.exclude`` name the culprit)."""
    names = list(candidates)
    check_patterns(include or (), names, f"{where}.layers", kind)
    check_patterns(exclude, names, f"{where}.exclude", kind)
    first, last = (names[0], names[-1]) if names else (None, None)
    return {n: m for n, m in candidates.items()
            if (include is None or matches(n, include, first, last)) and not matches(n, exclude, first, last)}


def first_match(ratios: Mapping[str, T], names: Iterable[str], default: T) -> T:
    """The value of the first pattern of ``ratios`` that matches one of ``names``, else ``default``."""
    names = list(names)
    return next((v for pat, v in ratios.items() if any(fnmatchcase(n, pat) for n in names)), default)

"""Number formats: one file per format, each a frozen dataclass implementing NumberFormat.

``FORMATS`` maps a recipe's ``format:`` name to its class; ``describe_formats()`` feeds
``effdnn formats``. The arbitrary-float format (``float``) registers itself here when present.
"""
from __future__ import annotations

from .base import NumberFormat
from .fixed import FixedPointFormat
from .granularity import PER_TENSOR, Granularity
from .integer import IntFormat, IntParams
from .kmeans import KMeansFormat, KMeansParams
from .log import LogFormat, LogParams
from .ste import clipped_ste, round_ste, ste

FORMATS: dict[str, type[NumberFormat]] = {
    "int": IntFormat,
    "fixed": FixedPointFormat,
    "log": LogFormat,
    "kmeans": KMeansFormat,
}

try:  # the arbitrary float eXmY format lives in its own module (built on the low-precision branch)
    from .float import FloatFormat  # type: ignore  # noqa: F401

    FORMATS["float"] = FloatFormat
except ImportError:  # pragma: no cover - present once the float format is merged
    pass


def describe_formats() -> list[tuple[str, str, str]]:
    """(name, class, first docstring line of its module) for every registered format."""
    import sys

    out = []
    for name, cls in FORMATS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
        out.append((name, cls.__name__, doc))
    return out


__all__ = ["FORMATS", "FixedPointFormat", "Granularity", "IntFormat", "IntParams", "KMeansFormat", "KMeansParams",
           "LogFormat", "LogParams", "NumberFormat", "PER_TENSOR", "clipped_ste", "describe_formats", "round_ste", "ste"]

"""Number formats: one file per format, each a frozen dataclass implementing NumberFormat.

``FORMATS`` maps a recipe's ``format:`` name to its class; ``describe_formats()`` feeds
``effdnn formats``.
"""
from __future__ import annotations

from .base import NumberFormat
from .fixed import FixedPointFormat
from .float import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat
from .granularity import PER_TENSOR, Granularity
from .integer import IntFormat, IntParams
from .kmeans import KMeansFormat, KMeansParams
from .log import LogFormat, LogParams
from .ste import clipped_ste, round_ste, ste

FORMATS: dict[str, type[NumberFormat]] = {
    "int": IntFormat,
    "fixed": FixedPointFormat,
    "float": FloatFormat,
    "log": LogFormat,
    "kmeans": KMeansFormat,
}


def describe_formats() -> list[tuple[str, str, str]]:
    """(name, class, first docstring line of its module) for every registered format."""
    import sys

    out = []
    for name, cls in FORMATS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
        out.append((name, cls.__name__, doc))
    return out


__all__ = ["BF16", "FORMATS", "FP16", "FP32", "FP8_E4M3", "FP8_E5M2", "FixedPointFormat", "FloatFormat", "Granularity",
           "IntFormat", "IntParams", "KMeansFormat", "KMeansParams", "LogFormat", "LogParams", "NumberFormat", "PER_TENSOR",
           "clipped_ste", "describe_formats", "round_ste", "ste"]

"""Number formats: one file per format, each a frozen dataclass implementing NumberFormat.

``FORMATS`` maps a recipe's ``format:`` name to its class and ``FORMAT_OPTIONS`` to the options model
that validates and builds it (``quant.config.TensorSpec`` dispatches through it); ``describe_formats()``
feeds ``effdnn formats``.
"""
from __future__ import annotations

from .base import FormatOptions, NumberFormat
from .fixed import FixedOptions, FixedPointFormat
from .float import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat, FloatOptions
from .granularity import PER_TENSOR, Granularity
from .integer import IntFormat, IntOptions, IntParams
from .kmeans import KMeansFormat, KMeansOptions, KMeansParams
from .log import LogFormat, LogOptions, LogParams
from .ste import clipped_ste, round_ste, ste

FORMATS: dict[str, type[NumberFormat]] = {
    "int": IntFormat,
    "fixed": FixedPointFormat,
    "float": FloatFormat,
    "log": LogFormat,
    "kmeans": KMeansFormat,
}
FORMAT_OPTIONS: dict[str, type[FormatOptions]] = {
    "int": IntOptions,
    "fixed": FixedOptions,
    "float": FloatOptions,
    "log": LogOptions,
    "kmeans": KMeansOptions,
}


def describe_formats() -> list[tuple[str, str, str]]:
    """(name, class, first docstring line of its module) for every registered format."""
    import sys

    out = []
    for name, cls in FORMATS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
        out.append((name, cls.__name__, doc))
    return out


__all__ = ["BF16", "FORMATS", "FORMAT_OPTIONS", "FormatOptions", "FP16", "FP32", "FP8_E4M3", "FP8_E5M2", "FixedPointFormat", "FloatFormat", "Granularity",
           "IntFormat", "IntParams", "KMeansFormat", "KMeansParams", "LogFormat", "LogParams", "NumberFormat", "PER_TENSOR",
           "clipped_ste", "describe_formats", "round_ste", "ste"]

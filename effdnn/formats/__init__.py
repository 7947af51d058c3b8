"""Number formats: one file per format, each a frozen dataclass implementing NumberFormat."""
from .base import NumberFormat
from .float import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat
from .ste import clipped_ste, round_ste, ste

__all__ = ["BF16", "FP8_E4M3", "FP8_E5M2", "FP16", "FP32", "FloatFormat", "NumberFormat", "clipped_ste", "round_ste", "ste"]

"""Number formats: one file per format, each a frozen dataclass implementing NumberFormat."""
from .base import NumberFormat
from .ste import clipped_ste, round_ste, ste

__all__ = ["NumberFormat", "clipped_ste", "round_ste", "ste"]

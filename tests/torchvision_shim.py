"""Import torchvision's model definitions with the CPU build of torch (used by tests and benchmarks).

torchvision 0.28.0's wheel links the CUDA build of torch 2.13; with the CPU build its compiled operators
(nms, roi_align, ...) are missing and ``import torchvision`` fails in torchvision/_meta_registrations.py,
where ``torch.library.register_fake("torchvision::nms")`` raises "operator torchvision::nms does not
exist". The classification models are pure Python and need none of those operators, so the import
runs with ``register_fake`` made a no-op decorator. Kept out of the effdnn package on purpose.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def import_torchvision() -> ModuleType | None:
    """``torchvision`` imported with its fake-kernel registrations skipped; ``None`` if it is not installed."""
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if importlib.util.find_spec("torchvision") is None:
        return None
    import torch.library

    real = torch.library.register_fake

    def _skip(*args: Any, **kwargs: Any) -> Any:
        return lambda fn: fn

    torch.library.register_fake = _skip  # type: ignore[assignment]
    try:
        return importlib.import_module("torchvision")
    finally:
        torch.library.register_fake = real

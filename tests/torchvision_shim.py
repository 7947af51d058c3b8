"""Import torchvision's model definitions with the CPU build of torch (used by tests and benchmarks).

torchvision 0.28.0's wheel links the CUDA build of torch 2.13; with the CPU build its compiled operators
(nms, roi_align, ...) are missing and ``import torchvision`` fails in torchvision/_meta_registrations.py,
where ``torch.library.register_fake("torchvision::nms")`` raises "operator torchvision::nms does not
exist". The classification models are pure Python and need none of those operators, so the import
runs with ``register_fake`` made a no-op decorator. :func:`install` does that for any later
``import torchvision`` (an import hook: nothing is imported until a test asks for torchvision).
Kept out of the effdnn package on purpose.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Iterator


@contextlib.contextmanager
def _fake_registrations_skipped() -> Iterator[None]:
    import torch.library

    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.library.register_fake = real


class _Finder(importlib.abc.MetaPathFinder):
    """Finds torchvision as the path finder does, with a loader that runs its ``__init__`` with the fake
    registrations skipped. Stays on ``sys.meta_path``: a bare ``find_spec`` (transformers' availability
    check) does not use it up before the real import."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with _fake_registrations_skipped():
                real_exec(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Make a later ``import torchvision`` skip the fake-kernel registrations."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def import_torchvision() -> ModuleType | None:
    """``torchvision`` imported through the shim; ``None`` if it is not installed."""
    install()
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        return None

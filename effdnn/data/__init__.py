"""Data sources by name: ``digits`` (default), ``fashion-mnist``, ``synthetic``, or ``"file.py:fn"`` (data sets,
or text: see ``text``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..errors import EffdnnError
from ..utils.user_code import call_user, is_user_ref, load_user_function
from . import digits, fashion_mnist, synthetic
from .bundle import DataBundle
from .idx import read_idx, write_idx
from .text import TokenDataset, is_text, text_bundle
from .validate import validate_bundle

DATASETS: dict[str, Callable[..., DataBundle]] = {
    "digits": lambda root=None, **kw: digits.load(**kw),
    "fashion-mnist": fashion_mnist.load,
    "synthetic": lambda root=None, **kw: synthetic.load(**kw),
}


def _labels(ds: Dataset) -> torch.Tensor:
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return torch.as_tensor(getattr(ds, attr))
    if hasattr(ds, "tensors"):
        return ds.tensors[1]
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def _user_bundle(ref: str, base_dir: str | Path | None, kwargs: dict[str, Any],
                 tokenizer: Callable[[], Any] | None = None, max_length: int | None = None) -> DataBundle:
    out = call_user(ref, load_user_function(ref, base_dir), **kwargs)
    if is_text(out):
        return text_bundle(ref, out, tokenizer, max_length)
    info: dict[str, Any] = {}
    if isinstance(out, tuple) and len(out) == 3 and isinstance(out[2], dict):
        out, info = out[:2], out[2]
    if not (isinstance(out, tuple) and len(out) == 2):
        raise EffdnnError(f"{ref}: must return (train_dataset, test_dataset[, info]), got {type(out).__name__}")
    train, test = out
    for split, ds in (("train", train), ("test", test)):
        if hasattr(ds, "__len__") and len(ds) == 0:
            raise EffdnnError(f"data {ref!r}: the {split} split is empty")
    try:
        x0 = train[0][0]
        num_classes = int(info.get("num_classes") or int(_labels(train).max()) + 1)
    except Exception as e:
        raise EffdnnError(f"{ref}: its datasets must yield (input, label) pairs ({type(e).__name__}: {e})") from None
    if not isinstance(x0, torch.Tensor) or x0.dim() not in (1, 3):
        raise EffdnnError(f"{ref}: inputs must be tensors shaped (C, H, W) or (F,), got {getattr(x0, 'shape', x0)}")
    c, hw = (x0.shape[0], (int(x0.shape[1]), int(x0.shape[2]))) if x0.dim() == 3 else (1, (1, int(x0.shape[0])))
    return DataBundle(ref, train, test, int(c), num_classes, hw)


def load_data(name: str, root: str | None = None, base_dir: str | Path | None = None,
              tokenizer: Callable[[], Any] | None = None, max_length: int | None = None, **kwargs: Any) -> DataBundle:
    """A :class:`DataBundle` for a data-set name or a user's ``"file.py:function"``; ``tokenizer`` (a loader,
    called only when the function returns sentences) and ``max_length`` serve text data."""
    if is_user_ref(name):
        bundle = _user_bundle(name, base_dir, kwargs, tokenizer, max_length)
        return bundle if bundle.text else validate_bundle(bundle)
    if name not in DATASETS:
        raise EffdnnError(f"data.name: unknown data set {name!r} (known: {', '.join(DATASETS)}, or 'file.py:function')")
    try:
        bundle = DATASETS[name](root=root, **kwargs)
    except TypeError as e:
        raise EffdnnError(f"data: bad option for {name!r}: {e}") from None
    return validate_bundle(bundle)


__all__ = ["DataBundle", "DATASETS", "TokenDataset", "load_data", "read_idx", "write_idx"]

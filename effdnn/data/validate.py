"""Checks every data set passes when it is loaded, so bad data fails in one line before training."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import EffdnnError
from .bundle import DataBundle

SAMPLE = 4096  # items read one by one when a data set does not hold its tensors (a user's Dataset)


def _columns(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the whole set (a TensorDataset) or of its first SAMPLE items."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[0], ds.tensors[1]
    items = [ds[i] for i in range(min(len(ds), SAMPLE))]  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([y for _, y in items])


def validate_bundle(data: DataBundle) -> DataBundle:
    """Non-empty splits, integer labels in [0, num_classes), finite inputs, one input shape."""
    shapes = {}
    for split in ("train", "test"):
        ds = getattr(data, split)
        if len(ds) == 0:  # type: ignore[arg-type]
            raise EffdnnError(f"data {data.name!r}: the {split} split is empty")
        try:
            x, y = _columns(ds)
        except Exception as e:
            raise EffdnnError(f"data {data.name!r}: its {split} split must yield (input, label) pairs of tensors "
                              f"({type(e).__name__}: {' '.join(str(e).split())})") from None
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise EffdnnError(f"data {data.name!r}: {split} labels must be integer class indices, got {y.dtype}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= data.num_classes:
            raise EffdnnError(f"data {data.name!r}: {split} labels must lie in 0..{data.num_classes - 1}, "
                              f"found {lo if lo < 0 else hi}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise EffdnnError(f"data {data.name!r}: the {split} inputs hold NaN or Inf")
        shapes[split] = tuple(x.shape[1:])
    if shapes["train"] != shapes["test"]:
        raise EffdnnError(f"data {data.name!r}: train inputs are {shapes['train']} but test inputs are {shapes['test']}")
    return data

"""The teacher's outputs for knowledge distillation, computed once when the training data is fixed.

A frozen teacher (eval mode) gives each training example the same logits in every epoch when the data
set is a plain ``TensorDataset`` (no random augmentation). Those logits are then computed in one pass
before training and looked up by example index, which removes the teacher's forward pass from every
step (about a quarter of a distilled step's work when teacher and student are alike). Any other data
set, a run that draws no more examples than the set holds, or logits that would not fit
``CACHE_LIMIT_BYTES``, runs the teacher at every step.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..utils.batches import forward

CACHE_LIMIT_BYTES = 512 << 20


class TeacherLogits:
    """``logits(x, indices)``: the teacher's outputs for a batch ``x`` made of dataset items ``indices``."""

    def __init__(self, teacher: nn.Module, dataset: Dataset, device: torch.device,
                 to_logits: Callable[[Any], torch.Tensor], examples: int, batch_size: int = 512) -> None:
        """``examples``: how many the training run will draw; the table is built only when that exceeds
        the data set (each example is then seen more than once, so one pass over all of them pays)."""
        self.teacher, self.to_logits = teacher, to_logits
        self.table: torch.Tensor | None = None
        if isinstance(dataset, TensorDataset) and 0 < len(dataset) < examples:
            self.table = self._all(dataset, device, batch_size)

    @torch.no_grad()
    def _all(self, dataset: TensorDataset, device: torch.device, batch_size: int) -> torch.Tensor | None:
        inputs = dataset.tensors[0]  # sliced, not loaded: a DataLoader would draw from the global RNG
        parts: list[torch.Tensor] = []
        for start in range(0, len(inputs), batch_size):
            out = self.to_logits(forward(self.teacher, inputs[start:start + batch_size].to(device)))
            if out.element_size() * out[0].numel() * len(dataset) > CACHE_LIMIT_BYTES:
                return None
            parts.append(out)
        return torch.cat(parts)

    @property
    def cached(self) -> bool:
        return self.table is not None

    @torch.no_grad()
    def __call__(self, x: Any, indices: Sequence[int] | None) -> torch.Tensor:
        if self.table is not None and indices is not None:
            return self.table[torch.as_tensor(indices, device=self.table.device)]
        return self.to_logits(forward(self.teacher, x))

"""The metric of unlabelled text: sentence embeddings (the last hidden state mean-pooled over the attention
mask, as Sentence-BERT pools; Reimers & Gurevych 2019) and their cosine against a reference model's."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils.batches import batch_input, forward, model_device, move
from .loop import embedding


@torch.no_grad()
def embeddings(model: nn.Module, data: Dataset, batch_size: int = 64) -> torch.Tensor:
    """One embedding per example of ``data`` (token examples: dicts, or (dict, label) pairs), in eval mode."""
    was = model.training
    model.eval()
    device = model_device(model)
    out = []
    try:
        for batch in DataLoader(data, batch_size=batch_size):
            x = move(batch_input(batch), device)
            out.append(embedding(forward(model, x), x).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def cosine_stats(emb: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Mean and min over examples of cos(e_i, e_ref_i)."""
    c = F.cosine_similarity(emb, reference, dim=-1)
    return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min())}

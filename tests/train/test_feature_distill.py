"""Label-free recovery: feature distillation from the FP32 teacher (DistillSpec.feature)."""
from __future__ import annotations

import copy

import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from effdnn.prune import MaskCallback
from effdnn.train import TrainSpec, fit
from effdnn.train.loop import embedding

transformers = pytest.importorskip("transformers")


def _setup():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, initializer_range=0.5)  # layers that matter
    teacher = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": torch.randint(0, 100, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long)}
             for _ in range(64)]  # no labels
    return teacher, items


def _cosine(student, teacher, items) -> float:
    x = {k: torch.stack([i[k] for i in items]) for k in items[0]}
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(embedding(student(**x), x), embedding(teacher(**x), x)).mean())


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_pruned_bert_recovers_without_labels(kind) -> None:
    teacher, items = _setup()
    student = effdnn.prune(teacher, {"method": "magnitude", "sparsity": 0.9, "exclude": ["pooler*"]}, [
        {k: torch.stack([i[k] for i in items[:16]]) for k in items[0]}])
    before = _cosine(student, teacher, items)
    spec = TrainSpec(epochs=5, lr=3e-3, distill={"feature": kind})
    fit(student, items, spec, batch_size=16, teacher=teacher, callbacks=[MaskCallback()], log=False)
    after = _cosine(student, teacher, items)
    assert 1 - after < 0.75 * (1 - before), (before, after)  # measured: 1 - cos 0.667 -> 0.432 / 0.439
    w = student.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.9, abs=0.01)  # the masks held


def test_no_labels_and_no_feature_distillation_is_one_line() -> None:
    teacher, items = _setup()
    with pytest.raises(EffdnnError, match="the batches have no labels; train without them by feature distillation"):
        fit(copy.deepcopy(teacher), items, TrainSpec(epochs=1), batch_size=16, log=False)


def test_feature_is_left_out_of_the_dump_when_unset() -> None:
    assert "feature" not in TrainSpec(distill={}).model_dump()["distill"]

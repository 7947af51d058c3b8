"""Wanda (Sun et al. 2024): |W_ij| * ||X_j||_2, compared within each output, calibrated on input batches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.prune.wanda import input_norms, wanda


def test_scores_are_weight_magnitude_times_input_norm() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    xs = [torch.randn(5, 4), torch.randn(7, 4)]
    s = wanda(m, {"0": m[0]}, data=xs)["0"]
    norm = torch.cat(xs).pow(2).sum(0).sqrt()
    torch.testing.assert_close(s, m[0].weight.detach().abs() * norm)
    assert input_norms(m, {"0": m[0]}, xs)["0"].shape == (4,)


def test_each_output_keeps_the_same_fraction_and_activations_decide() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].weight[:, :4] = 2.0  # larger weights on features 0-3 ...
    x = torch.randn(64, 8)
    x[:, 4:] *= 10  # ... but features 4-7 are 10x larger: Wanda keeps 4-7, magnitude 0-3
    p = effdnn.prune(m, {"method": "wanda", "sparsity": 0.5}, [x])
    w = p[0].weight
    assert (w[:, 4:] != 0).all() and (w[:, :4] == 0).all()
    assert ((w != 0).sum(1) == 4).all()
    mag = effdnn.prune(m, {"method": "magnitude", "sparsity": 0.5}, [x])
    assert (mag[0].weight[:, :4] != 0).all()
    err = lambda q: float((q(x) - m(x)).pow(2).mean())  # noqa: E731
    assert err(p) < 0.1 * err(mag)


def test_two_four_and_bert_with_dict_batches() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    m = transformers.BertModel(cfg).eval()
    data = [{"input_ids": torch.randint(0, 100, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)} for _ in range(2)]
    p = effdnn.prune(m, {"method": "wanda", "nm": "2:4", "exclude": ["pooler*"]}, data)
    w = p.encoder.layer[0].intermediate.dense.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()
    assert p.effdnn_report["pruned_layers_sparsity"] == pytest.approx(0.5)
    seq = effdnn.prune(m, {"method": "wanda", "sparsity": 0.5, "group": 6}, data)
    assert seq.effdnn_report["pruned_layers_sparsity"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(EffdnnError, match="key 'pixel_values' is not an argument of BertModel.forward"):
        effdnn.prune(m, {"method": "wanda", "sparsity": 0.5}, [{**data[0], "pixel_values": torch.zeros(4, 3)}])


def test_wanda_without_data_is_one_line() -> None:
    with pytest.raises(EffdnnError, match="needs calibration data"):
        effdnn.prune(nn.Sequential(nn.Linear(4, 3)), {"method": "wanda", "sparsity": 0.5})

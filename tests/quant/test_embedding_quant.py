"""Quantized embedding tables: int8 / int4 rows with per-row scales, stored as codes (real bytes)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.quant.deploy_linear import model_bytes
from effdnn.quant.embedding import QuantEmbedding, pack_int4, quantize_embeddings, unpack_int4
from tests.quant.tiny_bert import batches, tiny_bert


def test_int4_pack_roundtrip() -> None:
    codes = torch.randint(-8, 8, (5, 12), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), codes)


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_within_half_a_step(bits: int) -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    with torch.no_grad():
        emb.weight[7] *= 100  # one large row does not cost the others their precision
    q = QuantEmbedding(emb, bits)
    ids = torch.arange(50)
    got, ref = q(ids), emb(ids).detach()
    step = emb.weight.detach().abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    assert ((got - ref).abs() <= step / 2 + 1e-6).all()
    assert (got - ref).abs()[:7].max() < 0.1 * (got - ref).abs()[7].max()
    assert q.codes.numel() * q.codes.element_size() == 50 * 16 * bits // 8
    assert model_bytes(q) == 50 * 16 * bits // 8 + 50 * 4
    assert torch.equal(q.weight, q(ids))


def test_ptq_embedding_option_on_bert() -> None:
    m, data = tiny_bert(), batches(2)
    q = effdnn.quantize(m, {"method": "ptq", "act": None, "embedding": {"bits": 4, "min_rows": 100}}, data)
    rows = {r["layer"]: r for r in q.effdnn_report["embeddings"]}
    assert rows["embeddings.word_embeddings"]["bits"] == 4 and rows["embeddings.word_embeddings"]["bytes"] == 200 * 32 + 200 * 4
    assert rows["embeddings.position_embeddings"]["bits"] == 32  # 64 rows < min_rows: left in float
    assert isinstance(q.embeddings.word_embeddings, QuantEmbedding)
    assert q.state_dict()["embeddings.word_embeddings.codes"].dtype == torch.uint8
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(**data[0]).last_hidden_state.flatten(1),
                                                    m(**data[0]).last_hidden_state.flatten(1))
    assert cos.min() > 0.99


def test_quantize_embeddings_directly() -> None:
    m = tiny_bert()
    rows = quantize_embeddings(m, {"bits": 8})
    assert len(rows) == 3 and all(r["bits"] == 8 for r in rows)
    with pytest.raises(Exception, match="bits"):
        quantize_embeddings(tiny_bert(), {"bits": 5})

"""Quantized embedding tables: int8 or int4 rows with one fp32 scale per row (symmetric).

A vocabulary table is most of a small transformer's parameters (all-MiniLM-L6-v2: 11.7M of 22.7M).
Each row r (one token's vector) gets its own scale, so a rare token's large row does not cost the
precision of the others (per-row = per-channel along the vocabulary axis)::

    s_r = max_k |E_{r,k}| / qmax        C_{r,k} = clamp(round(E_{r,k} / s_r), -qmax, qmax)

``QuantEmbedding`` stores the codes themselves (int8, or two int4 codes per uint8 byte) and gathers
then dequantizes only the looked-up rows, so the model's ``state_dict`` and its reported size are
the real bytes. ``quantize_embeddings(model, spec)`` swaps every ``nn.Embedding`` of a model (Hugging
Face included) in place, by ``set_submodule``.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..cost.precision import LayerPrecision
from ..errors import EffdnnError
from ..registry import StrictModel


class EmbeddingSpec(StrictModel):
    """``embedding: {bits: 8}`` (or 4); ``min_rows``: tables with fewer rows (positions, token types)
    stay in float unless they have at least this many rows (0: every table)."""

    bits: Literal[4, 8] = 8
    min_rows: int = Field(0, ge=0)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed int4 codes (..., K) with K even -> uint8 (..., K/2): low nibble = even column."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (..., K/2) -> int8 codes (..., K) in -8..7."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


class QuantEmbedding(nn.Module):
    """An embedding table stored as int8 / int4 codes with per-row fp32 scales."""

    def __init__(self, emb: nn.Embedding, bits: int) -> None:
        super().__init__()
        w = emb.weight.detach().float()
        if bits == 4 and w.shape[1] % 2:
            raise EffdnnError(f"embedding: int4 rows need an even width, got {w.shape[1]}")
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(1) / qmax).clamp_min(1e-12)
        codes = torch.clamp(torch.round(w / scale[:, None]), -qmax - (1 if bits == 4 else 0), qmax).to(torch.int8)
        self.bits, self.num_embeddings, self.embedding_dim = bits, w.shape[0], w.shape[1]
        self.padding_idx = emb.padding_idx
        self.register_buffer("codes", pack_int4(codes) if bits == 4 else codes)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.codes)
        if self.bits == 4:
            rows = unpack_int4(rows)
        return rows.float() * F.embedding(ids, self.scale[:, None])

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (what the layer computes with), for code that reads ``.weight``."""
        return self.forward(torch.arange(self.num_embeddings, device=self.codes.device))

    def effdnn_precision(self) -> LayerPrecision:
        bits = self.codes.numel() * 8 + self.scale.numel() * 32
        return LayerPrecision(weight_bits=self.bits, act_bits=32, weight_kind="int", act_kind="float",
                              storage_bits=int(bits), label=f"embedding int{self.bits} per-row")

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits} per-row"


def quantize_embeddings(model: nn.Module, spec: EmbeddingSpec | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Swap every ``nn.Embedding`` of ``model`` (with at least ``spec.min_rows`` rows) for a
    :class:`QuantEmbedding` in place; returns one report row per table (name, bits, bytes)."""
    spec = EmbeddingSpec.model_validate(spec or {}) if not isinstance(spec, EmbeddingSpec) else spec
    rows = []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Embedding:
            continue
        if m.num_embeddings < spec.min_rows:
            rows.append({"layer": name, "rows": m.num_embeddings, "bits": 32, "bytes": m.weight.numel() * 4})
            continue
        q = QuantEmbedding(m, spec.bits)
        model.set_submodule(name, q)
        rows.append({"layer": name, "rows": m.num_embeddings, "bits": spec.bits,
                     "bytes": q.codes.numel() + q.scale.numel() * 4})
    return rows


__all__ = ["EmbeddingSpec", "QuantEmbedding", "pack_int4", "quantize_embeddings", "unpack_int4"]

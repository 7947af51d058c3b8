"""Contractions and attention in the dependency trace (:mod:`.graph`): whole heads are the unit.

A contraction a (..., n, k) @ b (..., k, m) joins the labels summed over (k) index by index. When
every field changing along k on both sides also changes along a batch dim, the operands are split
into heads (a reshape (B, L, E) -> (B, L, heads, head_dim) spread one field over two dims): then each
batch index (head) goes whole: all its k labels are one unit, joined with the same head of the other
operand (q with k), and the head's label is carried by the scores, so whatever the scores meet
element-wise (relative position biases, logit scales) joins the head, and ``scores @ v`` joins v's
head. The head-splitting reshapes of these operands then no longer join head_dim columns across
heads (they are *claimed*), so heads are removed whole and head_dim stays (Michel et al. 2019,
"Are Sixteen Heads Really Better than One?"; DepGraph, Fang et al. 2023, for q / k / v / out coupling).

The head count is read from the trace (the number of distinct heads met by q @ k^T); after pruning
the attention module that ran the contraction (innermost first) gets its integer attributes equal to
the head count and named ``*head*`` (``num_heads``, ``n_heads``, ``num_attention_heads``) lowered, and
those equal to heads x head_dim (``all_head_size``) too. An attention with no such attribute keeps
its heads, and says so in one line naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .graph import Recorder, compact, join_by_dims, var_dims


@dataclass
class HeadSite:
    """One q @ k^T split into heads: where it ran (module names, innermost last) and its head labels."""
    modules: tuple[str, ...]
    heads: int
    head_dim: int
    labels: np.ndarray  # one node per head
    owner: str = ""  # the module whose head-count attributes follow the pruning
    attrs: tuple[str, ...] = ()


def _batch_varying(f: torch.Tensor, nd: int) -> bool:
    return any(f.shape[d] > 1 for d in range(nd - 2))


def contract(rec: Recorder, a: torch.Tensor, b: torch.Tensor, out_shape: torch.Size) -> list[torch.Tensor]:
    """a (..., n, k) @ b (..., k, m): fields changing along k join index by index (all other positions
    folded in), or, split into heads on both sides, head by head; the others broadcast to the output."""
    passing, reps, kfields = [], [[], []], [[], []]
    for side, t in enumerate((a, b)):
        kdim = t.dim() - 1 if side == 0 else t.dim() - 2
        for f in rec.get(t):
            f = compact(f)
            (kfields[side] if f.shape[kdim] > 1 else passing).append(f)
    passing = [compact(f.expand(out_shape)) for f in passing]
    if kfields[0] and kfields[1] and a.dim() > 2 and b.dim() > 2 and \
            all(_batch_varying(f, f.dim()) for fs in kfields for f in fs):
        return passing + [_heads(rec, a, kfields)]
    for side, t in enumerate((a, b)):
        kdim = t.dim() - 1 if side == 0 else t.dim() - 2
        for f in kfields[side]:
            rows = f.movedim(kdim, -1).reshape(-1, f.shape[kdim])
            rec.union(rows, rows[:1])
            reps[side].append(rows[0])
    for r in reps[0][1:] + reps[1][1:]:
        rec.block(r, "contraction over several label fields")
    if reps[0] and reps[1]:
        rec.union(reps[0][0], reps[1][0])
    elif reps[0] or reps[1]:
        rec.block((reps[0] or reps[1])[0], "contraction with an unlabelled operand")
    return passing


def _heads(rec: Recorder, a: torch.Tensor, kfields: list[list[torch.Tensor]]) -> torch.Tensor:
    """Each head (batch index) of both operands whole, joined across the operands; returns its label
    field (changing along the batch dims only), which the scores carry."""
    head = None
    for fs in kfields:
        for f in fs:
            rep = f.narrow(f.dim() - 1, 0, 1).narrow(f.dim() - 2, 0, 1)
            rec.union(f, rep)
            rec.claim(f)
            if head is None:
                head = rep
            else:
                rec.union(head, rep)
    labels = np.unique(head.reshape(-1).numpy())
    rec.sites.append(HeadSite(tuple(rec.stack), int(labels.size), int(a.shape[-1]), labels[labels >= 0]))
    return head


def merge(rec: Recorder, fields: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output fields of a contraction: fields changing along the same dims join; a head field
    (claimed, changing along batch dims only) joins every field that changes along its dims and more
    (``scores @ v``: v's head goes with the head of q and k) and is then carried by them."""
    by_dims: dict[tuple[int, ...], torch.Tensor] = {}
    join_by_dims(rec, by_dims, fields)
    for dims, f in list(by_dims.items()):
        finer = [g for d, g in by_dims.items() if set(dims) < set(d)]
        if dims and finer and rec.is_claimed(f) and max(dims) < f.dim() - 2:
            for g in finer:
                rec.union(f, g)
                rec.claim(g)
            del by_dims[dims]
    return list(by_dims.values())


def sdpa(rec: Recorder, args: tuple, kwargs: dict, out: Any) -> None:
    """softmax(q k^T) v: q and k join along head_dim (head by head when split into heads), the output
    carries v's fields."""
    q, k, v = args[0], args[1], args[2]
    kt = torch.empty(k.transpose(-1, -2).shape, device="meta")
    rec.set(kt, [f.transpose(-1, -2) for f in rec.get(k)])
    scores_shape = torch.Size([*q.shape[:-1], k.shape[-2]])
    s_fields = contract(rec, q, kt, scores_shape)
    scores = torch.empty(scores_shape, device="meta")
    rec.set(scores, s_fields)
    o = out[0] if isinstance(out, (tuple, list)) else out
    rec.set(o, merge(rec, contract(rec, scores, v, o.shape)))
    mask = args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else kwargs.get("attn_mask")
    if isinstance(mask, torch.Tensor):
        rec.block_inputs(mask, "attention mask")


def tie_qkv(rec: Recorder, model: nn.Module) -> None:
    """Attention code derives head_dim from the input width (nn.MultiheadAttention, torchvision's Swin
    and MaxViT): the q / k / v projections must stay as wide as their input, so q, k and v column j
    goes with input channel j (a head removed takes its head_dim input channels with it)."""
    for mod in model.modules():
        w = None
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            w = mod.in_proj_weight
        elif isinstance(mod, nn.Linear) and mod.out_features == 3 * mod.in_features:
            w = mod.weight
        fields = {var_dims(f): f.reshape(-1) for f in rec.fields.get(id(w), [])} if w is not None else {}
        rows, cols = fields.get((0,)), fields.get((1,))
        if rows is not None and cols is not None:
            rec.union(rows.reshape(3, -1), cols.reshape(1, -1))


def _head_attrs(mod: nn.Module, heads: int) -> tuple[str, ...]:
    return tuple(k for k, v in vars(mod).items() if type(v) is int and v == heads and "head" in k.lower()
                 and not any(s in k.lower() for s in ("dim", "size")))


def resolve_heads(rec: Recorder, model: nn.Module) -> list[HeadSite]:
    """Find the module that owns each head split (innermost first); one without a head-count attribute
    keeps its heads whole (its labels blocked, with the layer named)."""
    mods = dict(model.named_modules())
    for site in rec.sites:
        for name in reversed(site.modules):
            attrs = _head_attrs(mods[name], site.heads)
            if attrs:
                site.owner, site.attrs = name, attrs
                break
        else:
            where = site.modules[-1] if site.modules else "the model"
            why = (f"attention heads of {where or 'the model'}: no head-count attribute (an int {site.heads} "
                   f"named *head*) to update")
            rec.graph.blocked.append((site.labels, why))
    return rec.sites


def set_head_counts(model: nn.Module, sites: list[HeadSite], comp: np.ndarray, removed: np.ndarray) -> None:
    """Lower the head-count attributes of each attention to the heads kept (head_dim unchanged)."""
    mods = dict(model.named_modules())
    for site in sites:
        if not site.owner:
            continue
        kept = int((~removed[comp[site.labels]]).sum())
        mod = mods[site.owner]
        for k, v in list(vars(mod).items()):
            if type(v) is not int or "head" not in k.lower():
                continue
            if k in site.attrs:
                setattr(mod, k, kept)
            elif v == site.heads * site.head_dim and site.heads > 1 and ("dim" in k.lower() or "size" in k.lower()):
                setattr(mod, k, kept * site.head_dim)

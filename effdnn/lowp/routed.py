"""Linear weights a parent module multiplies through ``F.linear`` itself rather than by calling the layer:
``nn.MultiheadAttention`` (its packed input projection and ``out_proj``, inside
``F.multi_head_attention_forward``) and, e.g., torchvision's Swin attention (``F.linear(x, self.qkv.weight)``).

While such a parent runs its forward, ``torch.nn.functional.linear`` is routed (hooks around the forward,
restored after, nesting counted): a call whose weight is one of the parent's emulated weights runs the
emulation with that layer's policy; every other call is torch's. The attention score products
(``Q K^T``, ``softmax(.) V``) stay float32: they are not layers with weights. The patch is process-wide
while such a forward runs (not for models run concurrently from several threads).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .linear import LowpLinear, emulated_linear
from .policy import LowpMixin

_TORCH_LINEAR = F.linear
_routes: list[dict[int, tuple[torch.Tensor, LowpMixin]]] = []  # one table per active parent


def _routed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    for table in reversed(_routes):
        hit = table.get(id(weight))
        if hit is not None and hit[0] is weight:
            return emulated_linear(x, weight, bias, hit[1])
    return _TORCH_LINEAR(x, weight, bias)


def _weights(mod: nn.Module) -> dict[int, tuple[torch.Tensor, LowpMixin]]:
    table = {id(c.weight): (c.weight, c) for c in mod.children() if isinstance(c, LowpLinear)}
    if isinstance(mod, LowpMultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            w = getattr(mod, name)
            if w is not None:
                table[id(w)] = (w, mod)
    return table


def _enter(mod: nn.Module, args: Any) -> None:
    _routes.append(_weights(mod))
    F.linear = _routed_linear  # torch.nn.functional's own calls (linear(...)) read the module global too


def _leave(mod: nn.Module, args: Any, out: Any) -> Any:
    _routes.pop()
    if not _routes:
        F.linear = _TORCH_LINEAR
    return out


def route_functional_linears(parent: nn.Module) -> None:
    """Hooks on ``parent`` (once) that route its own ``F.linear`` calls on emulated weights."""
    if not getattr(parent, "_lowp_routed", False):
        parent.register_forward_pre_hook(_enter)
        parent.register_forward_hook(_leave, always_call=True)
        parent._lowp_routed = True  # type: ignore[assignment]


class LowpMultiheadAttention(LowpMixin, nn.MultiheadAttention):
    """Its input projection runs emulated with its policy (``out_proj``: an emulated Linear of its own)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel would bypass F.linear
        try:
            return super().forward(*args, **kwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)

    effdnn_macs = None  # the cost model counts its ops as it does torch's (the projections' GEMMs inside)

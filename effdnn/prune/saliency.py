"""Importance (saliency) of single weights and of whole channels: which ones matter.

Weight saliencies (higher = keep), each a tensor shaped like the weight:
- ``magnitude``: |w| (Han et al. 2015, "Learning both weights and connections").
- ``lamp``: w^2 over the sum of w'^2 for every w' of the layer at least as large (Lee et al. 2021): a
  magnitude rescaled per layer so that one global threshold picks the layers' sparsities.
- ``taylor``: |w * dL/dw|, the first-order Taylor estimate of the loss change when w is set to 0
  (Molchanov et al. 2019, eq. 3), averaged over calibration batches.
- ``obd``: 0.5 * h_ii * w^2, Optimal Brain Damage (LeCun et al. 1990, eq. 5), the Hessian diagonal
  estimated from data: ``fisher`` (empirical Fisher, mean of squared per-example gradients) or
  ``hutchinson`` (E_z[z * Hz], z Rademacher; Bekas et al. 2007). Negative curvature estimates (noise
  at a minimum, where H is PSD) are clamped to 0.

Channel saliencies (one score per output channel of a conv / linear layer):
- ``l1``: L1 norm of the filter (Li et al. 2017, "Pruning filters for efficient ConvNets").
- ``bn_gamma``: |gamma| of the BatchNorm after the layer (Liu et al. 2017, network slimming).
- ``taylor``: |mean over the feature map of a * dL/da|, averaged over examples (Molchanov et al. 2017,
  eq. 8), a = the layer's output activation.
- ``magnitude`` / ``obd`` (and weight ``taylor`` as ``taylor_weight``): the weight saliency summed over the filter.
- ``group_l1``: every weight the channel couples, as DepGraph's group-level norm criterion (Fang et al.
  2023, "Towards any structural pruning"): the L1 norms of its filters in the group's producers, of the |gamma| of their
  BatchNorms, and of its input columns in the layers that read it, each of these terms divided by
  its mean over the channels (so layers of different scale weigh alike) and summed. Removing a channel
  removes all of those weights; ``l1`` looks at the filter alone. See :func:`group_l1`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import forward, model_device, move


def _labelled(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, dict):
        y = batch.get("labels", batch.get("label"))
        x = {k: v for k, v in batch.items() if k not in ("labels", "label")}
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        y = None
    if y is None:
        raise EffdnnError("this saliency needs labelled batches ((input, label) tuples or dicts with 'labels')")
    return x, y


def _batches(data: Iterable[Any] | None, max_batches: int, device: torch.device) -> list[tuple[Any, torch.Tensor]]:
    if data is None:
        raise EffdnnError("this saliency is estimated from data: pass data=<labelled batches> (or run it in a recipe)")
    out = []
    for i, b in enumerate(data):
        if i >= max_batches:
            break
        out.append(tuple(move(t, device) for t in _labelled(b)))
    if not out:
        raise EffdnnError("the calibration data is empty")
    return out


def _loss(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
    out = forward(model, x)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits, y)


def magnitude(model: nn.Module, layers: dict[str, nn.Module], data: Any = None, **_: Any) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs().clone() for n, m in layers.items()}


def lamp(model: nn.Module, layers: dict[str, nn.Module], data: Any = None, **_: Any) -> dict[str, torch.Tensor]:
    """Layer-adaptive magnitude (LAMP; Lee, Park, Mo, Ahn & Shin, ICLR 2021, eq. 3): with a layer's
    weights sorted by magnitude, score(u) = w_u^2 / sum_{v >= u} w_v^2, the weight's share of the energy
    of itself and every larger weight of its layer. In [0, 1], the largest weight of each layer scores 1,
    so one global threshold never empties a layer and the layers' sparsities adapt to their spectra."""
    out = {}
    for n, m in layers.items():
        sq = m.weight.detach().float().reshape(-1) ** 2
        order = torch.sort(sq, stable=True).indices
        tail = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])  # sum over this and every larger one
        score = torch.empty_like(sq)
        score[order] = sq[order] / tail.clamp_min(torch.finfo(sq.dtype).tiny)  # tail 0: all zeros from here, 0 / tiny
        out[n] = score.view_as(m.weight)
    return out


def _grad_of_loss(model: nn.Module, layers: dict[str, nn.Module], batches: list) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss over the batches w.r.t. each layer's weight (model in eval mode)."""
    was = model.training
    model.eval()
    grads = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    total = sum(int(y.numel()) for _, y in batches)
    try:
        for x, y in batches:
            ws = [m.weight for m in layers.values()]
            g = torch.autograd.grad(_loss(model, x, y) * (y.numel() / total), ws, allow_unused=True)
            for n, gi in zip(layers, g):
                if gi is not None:
                    grads[n] += gi
    finally:
        model.train(was)
    return grads


def taylor(model: nn.Module, layers: dict[str, nn.Module], data: Any = None, batches: int = 8, **_: Any) -> dict[str, torch.Tensor]:
    """|w * dL_b/dw| averaged over the calibration batches b (L_b: the batch's mean cross-entropy).

    Averaged per batch, not taken on the gradient of the whole set: at a trained minimum that
    gradient is ~0 and its product with w is noise (Molchanov et al. 2019 average per mini-batch)."""
    bs = _batches(data, batches, model_device(model))
    acc = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    for b in bs:
        g = _grad_of_loss(model, layers, [b])
        for n, m in layers.items():
            acc[n] += (m.weight.detach() * g[n]).abs() / len(bs)
    return acc


def fisher_diagonal(model: nn.Module, layers: dict[str, nn.Module], batches: list) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal: mean over examples of (d loss_example / dw)^2, per-example gradients by
    torch.func (vmap over grad), model in eval mode."""
    from torch.func import functional_call, grad, vmap

    was = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    wanted = [f"{n}.weight" for n in layers]
    missing = [w for w in wanted if w not in params]
    if missing:
        raise EffdnnError(f"obd: cannot find the weights {missing} among the model's parameters")

    def one(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**params, **p}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    acc = {w: torch.zeros_like(params[w]) for w in wanted}
    n = 0
    try:
        for x, y in batches:
            if not isinstance(x, torch.Tensor):
                raise EffdnnError("obd with hessian 'fisher' needs tensor inputs; use hessian 'hutchinson'")
            g = vmap(grad(one), in_dims=(None, 0, 0))({w: params[w] for w in wanted}, x, y)
            for w in wanted:
                acc[w] += (g[w] ** 2).sum(0)
            n += int(y.numel())
    finally:
        model.train(was)
    return {ln: acc[f"{ln}.weight"] / n for ln in layers}


def hutchinson_diagonal(model: nn.Module, layers: dict[str, nn.Module], batches: list, samples: int = 8,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Hutchinson's estimator of diag(H) of the mean loss: mean over Rademacher z of z * (H z),
    Hz by double back-propagation (Pearlmutter 1994)."""
    was = model.training
    model.eval()
    ws = [m.weight for m in layers.values()]
    acc = [torch.zeros_like(w) for w in ws]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = sum(int(y.numel()) for _, y in batches)
    try:
        for x, y in batches:
            g = torch.autograd.grad(_loss(model, x, y) * (y.numel() / total), ws, create_graph=True)
            for s in range(samples):
                z = [(torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w) for w in ws]
                hz = torch.autograd.grad(g, ws, grad_outputs=z, retain_graph=s < samples - 1)
                for a, zi, hi in zip(acc, z, hz):
                    a += zi * hi / samples
    finally:
        model.train(was)
    return {n: a.detach() for n, a in zip(layers, acc)}


HESSIANS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {"fisher": fisher_diagonal, "hutchinson": hutchinson_diagonal}


def obd(model: nn.Module, layers: dict[str, nn.Module], data: Any = None, batches: int = 8, hessian: str = "fisher",
        samples: int = 16, **_: Any) -> dict[str, torch.Tensor]:
    """0.5 * h_ii * w^2 (Optimal Brain Damage), h_ii from ``hessian`` ('fisher' or 'hutchinson')."""
    if hessian not in HESSIANS:
        raise EffdnnError(f"obd: unknown hessian estimate {hessian!r} (known: {', '.join(HESSIANS)})")
    bs = _batches(data, batches, model_device(model))
    kw = {"samples": samples} if hessian == "hutchinson" else {}
    h = HESSIANS[hessian](model, layers, bs, **kw)
    return {n: 0.5 * h[n].clamp_min(0) * m.weight.detach() ** 2 for n, m in layers.items()}


WEIGHT_SALIENCY: dict[str, Callable[..., dict[str, torch.Tensor]]] = {"magnitude": magnitude, "lamp": lamp, "taylor": taylor,
                                                                      "obd": obd}


def weight_saliency(method: str, model: nn.Module, layers: dict[str, nn.Module], data: Any = None, **kw: Any) -> dict[str, torch.Tensor]:
    """Saliency of every weight of ``layers`` (a tensor shaped like each weight), by ``method``."""
    if method not in WEIGHT_SALIENCY:
        raise EffdnnError(f"unknown weight saliency {method!r} (known: {', '.join(WEIGHT_SALIENCY)})")
    return WEIGHT_SALIENCY[method](model, layers, data=data, **kw)


# -- channels ---------------------------------------------------------------------------------------

def per_channel(scores: torch.Tensor) -> torch.Tensor:
    """Sum an element saliency over each output channel (dim 0): (O, ...) -> (O,)."""
    return scores.reshape(scores.shape[0], -1).sum(1)


def input_l1(mod: nn.Module, spatial: int = 1) -> torch.Tensor:
    """L1 norm of the weights of a Conv / Linear that read each of its input channels: (C,).
    After a flatten each channel owns ``spatial`` consecutive columns of a Linear."""
    w = mod.weight.detach().abs()
    return w.reshape(w.shape[0], w.shape[1] // spatial, -1).sum((0, 2))


def group_l1(producers: list[nn.Module], norms: list[nn.Module], consumers: list[tuple[nn.Module, int]]) -> torch.Tensor:
    """Group L1 after DepGraph's group-level norm criterion (Fang et al. 2023): one score per channel of a
    group, sum over the group's weight tensors t of ||t_c||_1 / mean_c' ||t_c'||_1, where t_c is what
    channel c owns in t: a producer's filter, a BatchNorm's gamma, a consumer's input columns
    (``(module, columns per channel)``). The division by the mean (ours) keeps a layer whose weights are
    larger from deciding alone."""
    terms = [per_channel(m.weight.detach().abs()) for m in producers]
    terms += [bn.weight.detach().abs() for bn in norms if getattr(bn, "weight", None) is not None]
    terms += [input_l1(m, spatial) for m, spatial in consumers]
    return sum(t.float().cpu() / t.float().mean().clamp_min(torch.finfo(torch.float32).tiny).cpu() for t in terms)


def channel_l1(layers: dict[str, nn.Module], norms: dict[str, nn.Module | None], **_: Any) -> dict[str, torch.Tensor]:
    """L1 norm of each output channel's weights (no |w| copy of the whole tensor)."""
    return {n: torch.linalg.vector_norm(m.weight.detach().reshape(m.weight.shape[0], -1), 1, dim=1)
            for n, m in layers.items()}


def channel_bn_gamma(layers: dict[str, nn.Module], norms: dict[str, nn.Module | None], **_: Any) -> dict[str, torch.Tensor]:
    out = {}
    for n in layers:
        bn = norms.get(n)
        if bn is None or getattr(bn, "weight", None) is None:
            raise EffdnnError(f"channel saliency 'bn_gamma': layer {n} is not followed by an affine BatchNorm")
        out[n] = bn.weight.detach().abs().clone()
    return out


def channel_taylor(layers: dict[str, nn.Module], norms: dict[str, nn.Module | None], model: nn.Module, data: Any = None,
                   batches: int = 8, **_: Any) -> dict[str, torch.Tensor]:
    """Molchanov et al. 2017: |mean_{h,w}(a * dL/da)| per channel and example, averaged over examples;
    a = the output of the layer's BatchNorm when it has one, else of the layer."""
    bs = _batches(data, batches, model_device(model))
    acts: dict[str, torch.Tensor] = {}
    scores = {n: torch.zeros(m.weight.shape[0], device=m.weight.device) for n, m in layers.items()}

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            out.retain_grad()
            acts[name] = out
        return fn

    handles = [(norms.get(n) or m).register_forward_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    count = 0
    try:
        for x, y in bs:
            acts.clear()
            model.zero_grad(set_to_none=True)
            _loss(model, x, y).backward()
            for n, a in acts.items():
                if a.grad is None:
                    continue
                prod = (a * a.grad).detach()  # (B, C, ...) ; the loss is a mean, so scale back per example
                per = prod.reshape(prod.shape[0], prod.shape[1], -1).mean(-1).abs() * prod.shape[0]  # (B, C)
                scores[n] += per.sum(0)
            count += int(y.numel())
        model.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: s / count for n, s in scores.items()}


def _from_weights(method: str) -> Callable[..., dict[str, torch.Tensor]]:
    def fn(layers: dict[str, nn.Module], norms: dict[str, nn.Module | None], model: nn.Module, data: Any = None, **kw: Any):
        return {n: per_channel(s) for n, s in weight_saliency(method, model, layers, data, **kw).items()}
    fn.__doc__ = f"weight saliency {method!r} summed over each filter"
    return fn


CHANNEL_SALIENCY: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "l1": channel_l1, "bn_gamma": channel_bn_gamma, "taylor": channel_taylor,
    "magnitude": _from_weights("magnitude"), "taylor_weight": _from_weights("taylor"), "obd": _from_weights("obd"),
}


def channel_saliency(method: str, model: nn.Module, layers: dict[str, nn.Module], norms: dict[str, nn.Module | None],
                     data: Any = None, **kw: Any) -> dict[str, torch.Tensor]:
    """One score per output channel of each of ``layers``; ``norms[name]`` is the BatchNorm after it (or None)."""
    if method not in CHANNEL_SALIENCY:
        raise EffdnnError(f"unknown channel saliency {method!r} (known: {', '.join(CHANNEL_SALIENCY)})")
    return CHANNEL_SALIENCY[method](layers, norms, model=model, data=data, **kw)

"""Dependency graph of one forward pass: which parameter dimensions must shrink together.

The idea. Every dimension of every floating-point parameter and buffer is a *slot* of numbered nodes
(one node per index). While the model runs once under a ``TorchDispatchMode`` (aten level: works for
any eager model, torch.fx-traceable or not: Hugging Face models, data-dependent control flow), every
tensor carries *label fields*: integer tensors broadcastable to its shape whose entries are node ids
(-1: none). A field is stored compact (size 1 along the dims where it is constant), so its ``var``
dims say along which dims of the tensor it changes. The op rules (:mod:`.rules`) then

- move labels through rearrangements by running the *same aten op on the labels* (view, reshape,
  permute, transpose, cat, split, chunk, slice, index, pad, channel shuffle ...): offset maps and
  channel-to-feature maps come out of the op itself;
- join (union) the labels that meet element-wise after broadcasting (residual adds, SE gates x * s,
  layer scale, position embeddings), that a contraction sums over (conv / linear inputs with the
  previous outputs, q with k), or that a norm's affine parameters touch;
- block the labels that reach the model output or an op no rule knows.

Connected components of the union (:mod:`.groups`) are the atomic units that structured pruning
removes or keeps; surgery (:mod:`.surgery`) slices every slot by the surviving units.
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import EffdnnError

PRODUCER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d)


@dataclass
class Slot:
    """One dimension of one parameter / buffer: nodes ``base .. base + size - 1``."""
    module: str
    param: str  # attribute name on the module ("weight", "running_mean", "class_token", ...)
    dim: int
    base: int
    size: int
    producer: bool = False  # output channels of a conv / linear layer

    @property
    def name(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param


@dataclass
class DepGraph:
    """What one traced forward pass found: slots, unions (edges), blocked nodes (with why)."""
    num_nodes: int
    slots: list[Slot]
    edges: list[np.ndarray] = field(default_factory=list)  # each (2, k) int64
    blocked: list[tuple[np.ndarray, str]] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # slot names whose tensors met an op
    heads: list = field(default_factory=list)  # attention.HeadSite: head splits and the modules owning them
    narrow: set[str] = field(default_factory=set)  # grouped convolutions pruned within their groups
    coarse: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # grouped convs' nodes: rounded up


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors inside nested tuples / lists / dicts (a cheap tree_flatten for op arguments)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    elif not isinstance(obj, (tuple, list)):
        return []
    out = []
    for o in obj:  # scalars and None, most of an op's arguments, without a call each
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (tuple, list, dict)):
            out += tensors_in(o)
    return out


def compact(lab: torch.Tensor) -> torch.Tensor:
    """``lab`` with every dim along which it is constant narrowed to size 1."""
    for d in range(lab.dim()):  # expanded dims first: constant there by construction, and free to drop
        if lab.shape[d] > 1 and lab.stride(d) == 0:
            lab = lab.narrow(d, 0, 1)
    for d in range(lab.dim()):
        if lab.shape[d] > 1:
            first = lab.narrow(d, 0, 1)
            if bool((lab == first).all()):
                lab = first
    return lab


def var_dims(lab: torch.Tensor) -> tuple[int, ...]:
    return tuple(d for d, s in enumerate(lab.shape) if s > 1)


class Recorder(TorchDispatchMode):
    """Runs the forward pass and keeps the label fields of every tensor (by identity)."""

    def __init__(self, graph: DepGraph, slot_of: dict[int, list[tuple[int, Slot]]]) -> None:
        super().__init__()
        self.graph = graph
        self.fields: dict[int, list[torch.Tensor]] = {}
        self.keep: list[torch.Tensor] = []  # keeps labelled tensors alive, so ids are not reused
        self.slot_names: dict[int, str] = {}
        self.adaptive: set[int] = set()  # unlabelled tensors whose sizes follow labelled ones (x.norm(dim=1))
        self.deferred: list[tuple[torch.Tensor, torch.Tensor]] = []  # reshape joins, applied unless claimed
        self.claimed = np.zeros(graph.num_nodes, dtype=bool)  # labels split into attention heads
        self.stack: list[str] = []  # the modules running now (outermost first)
        self.sites: list = []  # attention.HeadSite
        self.grouped: list = []  # grouped.GroupedConv, resolved after the pass
        for tid, entries in slot_of.items():
            self.fields[tid] = [self._slot_field(s, ndim) for ndim, s in entries]
            self.slot_names[tid] = entries[0][1].module + "." + entries[0][1].param

    @staticmethod
    def _slot_field(s: Slot, ndim: int) -> torch.Tensor:
        shape = [1] * ndim
        shape[s.dim] = s.size
        return torch.arange(s.base, s.base + s.size, dtype=torch.int64).view(shape)

    def get(self, t: Any) -> list[torch.Tensor]:
        if not isinstance(t, torch.Tensor):
            return []
        name = self.slot_names.get(id(t))
        if name is not None:
            self.graph.used.add(name)
        return self.fields.get(id(t), [])

    def set(self, t: Any, fields: list[torch.Tensor]) -> None:
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            fields = [f for f in fields if f.numel() > 0 and bool((f >= 0).any())]
            self.fields[id(t)] = fields
            self.keep.append(t)

    def mark_adaptive(self, outs: list) -> None:
        for t in outs:
            if isinstance(t, torch.Tensor):
                self.adaptive.add(id(t))
                self.keep.append(t)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Join labels ``a`` and ``b`` element-wise (broadcast); -1 entries are ignored."""
        a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1).numpy(), b.reshape(-1).numpy()  # numpy: a few us per op on small label vectors
        ok = (a >= 0) & (b >= 0) & (a != b)
        if not ok.all():
            a, b = a[ok], b[ok]
        if a.size > 65536:  # many repeats (a field broadcast over positions): distinct pairs, one sort
            code = np.unique(a * self.graph.num_nodes + b)
            a, b = code // self.graph.num_nodes, code % self.graph.num_nodes
        if a.size:
            self.graph.edges.append(np.stack([a, b]))

    def defer(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """A join made at the end of the pass, unless its labels were split into heads by then."""
        self.deferred.append((a, b))

    def claim(self, lab: torch.Tensor) -> None:
        flat = lab.reshape(-1)
        self.claimed[flat[flat >= 0].numpy()] = True

    def is_claimed(self, lab: torch.Tensor) -> bool:
        flat = lab.reshape(-1)
        return bool(self.claimed[flat[flat >= 0].numpy()].any())

    def apply_deferred(self) -> None:
        """The deferred reshape joins whose labels no attention split into heads."""
        for a, b in self.deferred:
            a, b = torch.broadcast_tensors(a, b)
            a, b = a.reshape(-1), b.reshape(-1)
            ok = (a >= 0) & (b >= 0) & (a != b)
            a, b = a[ok], b[ok]
            free = ~torch.as_tensor(self.claimed[a.numpy()] | self.claimed[b.numpy()])
            if bool(free.any()):
                self.union(a[free], b[free])
        self.deferred = []

    def union_all(self, lab: torch.Tensor) -> None:
        """Join every label of ``lab`` into one unit."""
        flat = lab.reshape(-1).numpy()
        flat = np.unique(flat[flat >= 0])
        if flat.size > 1:
            self.graph.edges.append(np.stack([flat[:-1], flat[1:]]))

    def block(self, lab: torch.Tensor, why: str) -> None:
        flat = lab.reshape(-1).numpy()
        flat = np.unique(flat[flat >= 0])
        if flat.size:
            self.graph.blocked.append((flat, why))

    def block_inputs(self, args: Any, why: str) -> None:
        for t in tensors_in(args):
            for f in self.get(t):
                self.block(f, why)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        from .rules import apply_rule  # late import: rules imports this module

        try:
            apply_rule(self, func, args, kwargs, out)
        except Exception as e:  # noqa: BLE001 (a rule that cannot follow this op keeps what it touches whole)
            self.block_inputs((args, kwargs), f"{func.__name__} ({type(e).__name__}: {str(e)[:80]})")
        return out


def join_by_dims(rec: Recorder, by_dims: dict[tuple[int, ...], torch.Tensor], fields: list[torch.Tensor]) -> None:
    """Join each field with the one already in ``by_dims`` that changes along the same dims, or file it there."""
    for f in fields:
        dims = var_dims(f)
        if dims in by_dims:
            rec.union(by_dims[dims], f)
        else:
            by_dims[dims] = f


def _slots(model: nn.Module) -> tuple[list[Slot], dict[int, list[tuple[int, Slot]]], int]:
    """A slot for every dim (of size > 1) of every floating-point parameter and buffer."""
    slots: list[Slot] = []
    slot_of: dict[int, list[tuple[int, Slot]]] = {}
    base = 0
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        tensors = list(mod._parameters.items()) + list(mod._buffers.items())
        for pname, t in tensors:
            if t is None or id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            entries = []
            for d, size in enumerate(t.shape):
                if size > 1:
                    s = Slot(mname, pname, d, base, int(size),
                             producer=d == 0 and pname == "weight" and isinstance(mod, PRODUCER_TYPES)
                             and not isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)))
                    base += int(size)
                    slots.append(s)
                    entries.append((t.dim(), s))
            if entries:
                slot_of[id(t)] = entries
    return slots, slot_of, base


@contextmanager
def _module_stack(model: nn.Module, stack: list[str]) -> Iterator[None]:
    """Keep ``stack`` = the names of the modules running now (attention sites name their module)."""
    names = {id(m): n for n, m in model.named_modules()}

    def pre(mod: nn.Module, args: Any) -> None:
        if id(mod) in names:
            stack.append(names[id(mod)])

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        if id(mod) in names and stack:
            stack.pop()

    hooks = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, always_call=True)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _run(model: nn.Module, x: Any) -> Any:
    return model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, (tuple, list)) else model(x)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside, each module's own mode back after: only the modules in train
    mode have their flag switched (a model already in eval costs nothing; mixed modes survive)."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def trace_graph(model: nn.Module, example_input: Any, ratio: Callable[[str], float] | None = None,
                grouped: str = "narrower") -> tuple[DepGraph, Any]:
    """Run ``model`` once on ``example_input`` recording the dependency graph; returns (graph, output).
    ``ratio(layer)``: the fraction of channels to be removed there; ``grouped``: how grouped
    convolutions lose channels (grouped.py: narrower, fewer or nearest by the ratio; default 0.5)."""
    slots, slot_of, n = _slots(model)
    graph = DepGraph(n, slots)
    rec = Recorder(graph, slot_of)
    inputs = [t for t in tree_flatten(example_input)[0] if isinstance(t, torch.Tensor)]
    for i, t in enumerate(inputs):  # the model input's channels are fixed: a blocked slot of its own
        if t.dim() >= 2 and t.is_floating_point():
            s = Slot("", f"<input {i}>", 1, graph.num_nodes, int(t.shape[1]))
            graph.num_nodes += s.size
            rec.fields[id(t)] = [Recorder._slot_field(s, t.dim())]
            rec.block(rec.fields[id(t)][0], "model input")
    rec.claimed = np.zeros(graph.num_nodes, dtype=bool)
    from .attention import resolve_heads, tie_qkv
    from .grouped import resolve_grouped

    tie_qkv(rec, model)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel hides q / k / v from the rules
    gc_was = gc.isenabled()
    gc.disable()  # the pass allocates many small objects and frees none: collections only cost time
    try:
        with torch.no_grad(), eval_mode(model), _module_stack(model, rec.stack), rec:
            out = _run(model, example_input)
    except Exception as e:  # noqa: BLE001 (any failure of user code is reported in one line)
        raise EffdnnError(f"structured pruning: the model does not run on the example input "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if gc_was:
            gc.enable()
        torch.backends.mha.set_fastpath_enabled(fast)
    rec.block_inputs(out, "model output")
    graph.heads = resolve_heads(rec, model)
    rec.apply_deferred()
    graph.narrow, graph.coarse = resolve_grouped(rec, ratio or (lambda name: 0.5), grouped)  # type: ignore[arg-type]
    return graph, out

"""Coupling: from the traced unions to the units and groups structured pruning works on.

The idea. The connected components of the union graph (:class:`.graph.DepGraph`) are *units*: sets
of parameter indices that exist only together (one channel of a residual stream with every conv,
norm and linear column that touches it; a whole group of a grouped convolution; one head_dim column
across the heads of an attention). A unit that holds no producer node (an output channel of a conv /
linear layer) is not a channel to prune; a unit holding a blocked node stays (and says why).
Units with the same set of producer layers form a *group*: the channels one ratio applies to
(a conv's outputs; a residual stream's; one branch of a concatenation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .graph import DepGraph, Slot


@dataclass
class Group:
    """Units (each a component id) sharing one set of producer layers."""
    producers: list[str]
    units: list[int] = field(default_factory=list)  # prunable units
    all_units: list[int] = field(default_factory=list)
    size: int = 0  # all units, blocked ones included
    blocked: str = ""  # why (some of) its units stay


@dataclass
class Coupling:
    comp: np.ndarray  # node -> component id
    groups: list[Group]
    slot_nodes: dict[str, list[tuple[Slot, np.ndarray]]]  # module -> its slots (and their nodes' components)



def components(graph: DepGraph) -> np.ndarray:
    """Connected components over all nodes (union-find by scipy's sparse graph routine)."""
    n = graph.num_nodes
    if graph.edges:
        e = np.concatenate(graph.edges, axis=1)
    else:
        e = np.zeros((2, 0), dtype=np.int64)
    adj = coo_matrix((np.ones(e.shape[1], dtype=bool), (e[0], e[1])), shape=(n, n))
    return connected_components(adj, directed=False)[1]


def couple(graph: DepGraph) -> Coupling:
    """Units and groups of the traced graph, in the order their producers were defined."""
    comp = components(graph)
    why: dict[int, str] = {}
    if graph.blocked:  # the first reason that reached each blocked component
        nodes = np.concatenate([n for n, _ in graph.blocked])
        reason = np.concatenate([np.full(len(n), i) for i, (n, _) in enumerate(graph.blocked)])
        comps, first = np.unique(comp[nodes], return_index=True)
        why = {int(c): graph.blocked[int(r)][1] for c, r in zip(comps, reason[first])}
    slot_nodes: dict[str, list[tuple[Slot, np.ndarray]]] = {}
    names: list[str] = []  # producer modules in definition order
    pairs = []
    for s in graph.slots:
        comps = comp[s.base:s.base + s.size]
        slot_nodes.setdefault(s.module, []).append((s, comps))
        if s.producer and s.name in graph.used:
            if not names or names[-1] != s.module:
                names.append(s.module)
            pairs.append(np.stack([comps, np.full(len(comps), len(names) - 1)]))
    groups = _group_units(comp, pairs, names, why)
    return Coupling(comp, groups, slot_nodes)


def _group_units(comp: np.ndarray, pairs: list[np.ndarray], names: list[str], why: dict[int, str]) -> list[Group]:
    """Units with the same set of producers form a group (sets compared by a random 64-bit signature
    each, the sum over their producers); groups ordered by their producers' definition, units by
    their first node."""
    if not pairs:
        return []
    code = np.unique(np.concatenate(pairs, axis=1).T.astype(np.int64) @ np.array([len(names), 1]))
    cs, ps = code // len(names), code % len(names)  # distinct (unit, producer), by unit then producer
    units, inv = np.unique(cs, return_inverse=True)
    rnd = np.random.default_rng(0).integers(1, 2 ** 62, size=len(names), dtype=np.int64)
    sig = np.zeros(len(units), dtype=np.int64)
    np.add.at(sig, inv, rnd[ps])
    _, rep, ginv = np.unique(sig, return_index=True, return_inverse=True)
    first = np.unique(comp, return_index=True)[1]
    blocked = np.array([int(c) in why for c in units]) if why else np.zeros(len(units), dtype=bool)
    order = np.argsort(ginv, kind="stable")
    cuts = np.flatnonzero(np.diff(ginv[order])) + 1
    out = []
    for k, members in enumerate(np.split(order, cuts)):
        c0 = units[rep[k]]
        prods = ps[np.searchsorted(cs, c0):np.searchsorted(cs, c0, side="right")]
        g = Group([names[i] for i in prods], all_units=units[members].tolist(), size=len(members))
        free = units[members][~blocked[members]]
        g.units = free[np.argsort(first[free], kind="stable")].tolist()
        stuck = units[members][blocked[members]]
        g.blocked = why[int(stuck[0])] if len(stuck) else ""
        out.append((tuple(prods.tolist()), g))
    return [g for _, g in sorted(out, key=lambda kg: kg[0])]


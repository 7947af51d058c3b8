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
    adj = coo_matrix((np.ones(e.shape[1], dtype=np.int8), (e[0], e[1])), shape=(n, n))
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
    groups: dict[tuple[int, ...], Group] = {}
    if pairs:  # (component, producer) pairs, distinct, by component then producer
        code = np.unique(np.concatenate(pairs, axis=1).T.astype(np.int64) @ np.array([len(names), 1]))
        cs, ps = code // len(names), code % len(names)
        cuts = np.flatnonzero(np.diff(cs)) + 1
        for c, prods in zip(cs[np.r_[0, cuts]], np.split(ps, cuts)):
            key = tuple(prods.tolist())
            g = groups.get(key)
            if g is None:
                g = groups[key] = Group([names[i] for i in key])
            g.size += 1
            g.all_units.append(int(c))
            if int(c) in why:
                g.blocked = g.blocked or why[int(c)]
            else:
                g.units.append(int(c))
    ordered = [groups[k] for k in sorted(groups)]  # by their first producer's definition
    first = np.unique(comp, return_index=True)[1]
    for g in ordered:
        g.units = [int(c) for c in np.asarray(g.units)[np.argsort(first[g.units], kind="stable")]] if g.units else []
    return Coupling(comp, ordered, slot_nodes)

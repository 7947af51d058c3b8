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
    producers_of: dict[int, list[str]] = {}
    slot_nodes: dict[str, list[tuple[Slot, np.ndarray]]] = {}
    for s in graph.slots:
        comps = comp[s.base:s.base + s.size]
        slot_nodes.setdefault(s.module, []).append((s, comps))
        if s.producer and s.name in graph.used:
            for c in np.unique(comps):
                lst = producers_of.setdefault(int(c), [])
                if s.module not in lst:
                    lst.append(s.module)
    groups: dict[tuple[str, ...], Group] = {}
    for c, prods in producers_of.items():
        key = tuple(prods)
        g = groups.setdefault(key, Group(list(prods)))
        g.size += 1
        g.all_units.append(c)
        if c in why:
            g.blocked = g.blocked or why[c]
        else:
            g.units.append(c)
    order = {s.module: i for i, s in enumerate(graph.slots)}
    ordered = sorted(groups.values(), key=lambda g: min(order[p] for p in g.producers))
    first = np.unique(comp, return_index=True)[1]
    for g in ordered:
        g.units.sort(key=lambda c: first[c])
    return Coupling(comp, ordered, slot_nodes)

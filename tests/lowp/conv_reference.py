"""A slow reference for the emulated convolutions: every output, column gradient and weight gradient
is one scalar dot product (tests/lowp/test_accumulate.py's ``reference_dot``: one rounded addition at a
time, in chunks), its terms read straight from the definition of the layer (padding modes by their
formulas, transposed convolutions by ``input index = (output + padding - tap * dilation) / stride``).
Window overlaps and bias gradients are summed exactly (``math.fsum``), then rounded to float32 and to
the output format, as the emulation documents."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from effdnn.formats.float import FloatFormat
from effdnn.formats.float_reference import round_reference
from effdnn.lowp.gemm import GemmPolicy
from tests.lowp.test_accumulate import reference_dot


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


def _rnd(v: float, fmt: FloatFormat | None) -> float:
    return v if fmt is None else round_reference(v, fmt)


def _map(q: int, size: int, mode: str) -> int | None:
    """A padded coordinate ``q`` (may lie outside ``[0, size)``) as an input index, or None (a zero)."""
    if 0 <= q < size:
        return q
    if mode == "zeros":
        return None
    if mode == "reflect":
        return -q if q < 0 else 2 * (size - 1) - q
    if mode == "replicate":
        return min(max(q, 0), size - 1)
    return q % size  # circular


@dataclass
class Layer:
    """The layer's definition, read from the torch module."""

    m: nn.Module

    def __post_init__(self) -> None:
        m = self.m
        self.transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        self.k, self.stride, self.dil, self.g = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), m.groups
        d = len(self.k)
        if m.padding == "same":
            self.lo = tuple(dl * (k - 1) // 2 for dl, k in zip(self.dil, self.k))
            self.hi = tuple(dl * (k - 1) - lo for dl, k, lo in zip(self.dil, self.k, self.lo))
        elif m.padding == "valid":
            self.lo = self.hi = (0,) * d
        else:
            self.lo = self.hi = tuple(m.padding)
        self.op = tuple(m.output_padding) if self.transposed else (0,) * d
        self.mode = m.padding_mode

    def out_spatial(self, s: tuple[int, ...]) -> tuple[int, ...]:
        if self.transposed:
            return tuple((n - 1) * st - 2 * p + dl * (k - 1) + op + 1
                         for n, st, p, dl, k, op in zip(s, self.stride, self.lo, self.dil, self.k, self.op))
        return tuple((n + lo + hi - dl * (k - 1) - 1) // st + 1
                     for n, lo, hi, dl, k, st in zip(s, self.lo, self.hi, self.dil, self.k, self.stride))

    def source(self, o: tuple[int, ...], tap: tuple[int, ...], s: tuple[int, ...]) -> tuple[int, ...] | None:
        """The input position output ``o`` reads at tap ``tap`` (the K order: taps row-major; for a
        transposed layer the taps of the flipped kernel), or None for a zero term."""
        if self.transposed:
            pos = []
            for od, t, k, dl, p, st, n in zip(o, tap, self.k, self.dil, self.lo, self.stride, s):
                v = od + p - (k - 1 - t) * dl
                if v % st or not 0 <= v // st < n:
                    return None
                pos.append(v // st)
            return tuple(pos)
        pos = [_map(od * st - lo + t * dl, n, self.mode) for od, st, lo, t, dl, n in zip(o, self.stride, self.lo, tap, self.dil, s)]
        return None if None in pos else tuple(pos)

    def weight(self, w: torch.Tensor, n: int, c: int, tap: tuple[int, ...]) -> float:
        """The weight of output channel ``n`` and group-local input channel ``c`` at tap ``tap``."""
        if not self.transposed:
            return w[(n, c, *tap)].item()
        ng = w.shape[1]
        flipped = tuple(k - 1 - t for k, t in zip(self.k, tap))
        return w[((n // ng) * w.shape[0] // self.g + c, n % ng, *flipped)].item()


def reference_conv(m: nn.Module, x: torch.Tensor, gy: torch.Tensor, p: GemmPolicy) -> dict[str, torch.Tensor]:
    """Output, input / weight / bias gradients of the emulated layer ``m`` (a torch conv layer) for
    input ``x`` and output gradient ``gy``, one scalar at a time."""
    L = Layer(m)
    xs = [_rnd(v, p.act) for v in x.flatten().tolist()]
    xq = torch.tensor(xs, dtype=torch.float64).reshape(x.shape)
    wq = torch.tensor([_rnd(v, p.weight) for v in m.weight.flatten().tolist()], dtype=torch.float64).reshape(m.weight.shape)
    e = torch.tensor([_rnd(v, p.grad) for v in gy.flatten().tolist()], dtype=torch.float64).reshape(gy.shape)
    b, c_in, *s = x.shape
    s = tuple(s)
    out = L.out_spatial(s)
    n_out = gy.shape[1]
    cg, ng = c_in // L.g, n_out // L.g
    taps = list(itertools.product(*[range(k) for k in L.k]))
    positions = list(itertools.product(*[range(o) for o in out]))
    terms = [(c, t) for c in range(cg) for t in taps]  # K order: channel, then taps

    def col(bi: int, grp: int, o, c: int, t) -> float:
        src = L.source(o, t, s)
        return 0.0 if src is None else xq[(bi, grp * cg + c, *src)].item()

    def dot(a: list[float], bb: list[float]) -> float:
        return reference_dot(a, bb, p.acc, p.prod, p.chunk) if p.acc is not None else math.fsum(u * v for u, v in zip(a, bb))

    y = torch.zeros(b, n_out, *out)
    gx = [[0.0] for _ in range(x.numel())]
    gw = torch.zeros(n_out, cg, *L.k)  # of the (flipped, for transposed) convolution weight
    for bi, n, o in itertools.product(range(b), range(n_out), positions):
        grp = n // ng
        v = dot([col(bi, grp, o, c, t) for c, t in terms], [L.weight(wq, n, c, t) for c, t in terms])
        bias = m.bias[n].item() if m.bias is not None else 0.0
        y[(bi, n, *o)] = _rnd(_f32(v + bias), p.out)
    for bi, o, grp in itertools.product(range(b), positions, range(L.g)):  # column gradients, scattered
        for c, t in terms:
            gcol = dot([e[(bi, grp * ng + j, *o)].item() for j in range(ng)],
                       [L.weight(wq, grp * ng + j, c, t) for j in range(ng)])
            src = L.source(o, t, s)
            if src is not None:
                flat = ((bi * c_in + grp * cg + c) * math.prod(s)) + sum(i * math.prod(s[d + 1:]) for d, i in enumerate(src))
                gx[flat].append(gcol)
    for n, (c, t) in itertools.product(range(n_out), terms):
        grp = n // ng
        pairs = [(e[(bi, n, *o)].item(), col(bi, grp, o, c, t)) for bi in range(b) for o in positions]
        gw[(n, c, *t)] = _rnd(_f32(dot([u for u, _ in pairs], [v for _, v in pairs])), p.out)
    res = {"y": y, "gx": torch.tensor([_rnd(_f32(math.fsum(v)), p.out) for v in gx]).reshape(x.shape),
           "gw": _weight_layout(L, gw, m.weight.shape)}
    if m.bias is not None:
        res["gb"] = torch.tensor([_rnd(_f32(math.fsum(e[:, n].flatten().tolist())), p.out) for n in range(n_out)])
    return res


def _weight_layout(L: Layer, gw: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The convolution weight's gradient in the layer's own weight layout (transposed: unflip, regroup)."""
    if not L.transposed:
        return gw
    out = torch.zeros(shape)
    ng, cg = shape[1], shape[0] // L.g
    for n, c in itertools.product(range(gw.shape[0]), range(cg)):
        for t in itertools.product(*[range(k) for k in L.k]):
            flipped = tuple(k - 1 - i for k, i in zip(L.k, t))
            out[((n // ng) * cg + c, n % ng, *flipped)] = gw[(n, c, *t)]
    return out

"""k-means codebook ("non-linear quantization, table lookup"): Han et al. 2016, "Deep Compression",
section 3 (weight sharing). Each block (tensor, channel or group) gets k = 2^bits centroids C; a weight
is stored as the index of its nearest centroid:

    argmin_C  sum_i sum_{w in c_i} |w - c_i|^2           (Deep Compression eq. 1)

Initialisations (section 3.1): ``linear`` (k points evenly between min and max; the paper's best),
``density`` (evenly spaced on the weights' CDF), ``random`` (Forgy: k distinct weights chosen at random)
and ``kmeans++`` (Arthur & Vassilvitskii 2007, D^2 sampling).

Fast on a million weights: in one dimension a sorted codebook partitions the line at the midpoints of
neighbouring centroids, so after one sort of each block, a Lloyd iteration costs k binary searches and
two prefix-sum lookups per block (O(k log N)) instead of an O(N k) distance matrix; all blocks are
solved at once. ``mask`` (e.g. a pruning mask) restricts the fit to the kept weights (Deep Compression
clusters only the weights that survive pruning).

Storage (``storage_bits``): ``bits`` per index + k fp32 centroids per block.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from ..errors import EffdnnError
from .base import FormatOptions, NumberFormat
from .granularity import PER_TENSOR, Granularity
from .ste import ste

Init = Literal["linear", "density", "random", "kmeans++"]
INITS = ("linear", "density", "random", "kmeans++")


@dataclass
class KMeansParams:
    codebook: torch.Tensor  # (G, k), each row sorted ascending


@dataclass(frozen=True)
class KMeansFormat(NumberFormat):
    bits: int = 4  # type: ignore[assignment]
    init: Init = "linear"
    iters: int = 30
    granularity: Granularity = field(default=PER_TENSOR)
    seed: int = 0
    name = "kmeans"
    compute_kind = "float"  # indices decode to fp32 centroids: the arithmetic stays float (storage shrinks)
    compute_bits = 32

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 10:
            raise EffdnnError(f"kmeans format: bits must be an integer in 1..10, got {self.bits!r}")
        if self.init not in INITS:
            raise EffdnnError(f"kmeans format: unknown init {self.init!r} (known: {', '.join(INITS)})")
        if self.iters < 0:
            raise EffdnnError(f"kmeans format: iters must be >= 0, got {self.iters}")
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", Granularity.of(self.granularity))

    @property
    def k(self) -> int:
        return 2**self.bits

    # -- fitting -----------------------------------------------------------------------------------
    def compute_params(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> KMeansParams:
        """Fit a codebook per block of ``x`` (only where ``mask`` is true, if given)."""
        return self.fit(x, mask)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> KMeansParams:
        b = self.granularity.to_blocks(x.detach()).double()  # (G, N)
        if not torch.isfinite(b).all():
            raise EffdnnError("kmeans format: the tensor to cluster has NaN or Inf values")
        G, N = b.shape
        if mask is not None:
            keep = self.granularity.to_blocks(mask.to(torch.bool))
            b = torch.where(keep, b, torch.full_like(b, float("inf")))  # masked values sort to the end
            n = keep.sum(1)  # (G,)
        else:
            n = torch.full((G,), N, dtype=torch.long, device=b.device)
        xs, _ = torch.sort(b, dim=1)  # (G, N)
        finite = torch.where(torch.isfinite(xs), xs, torch.zeros_like(xs))
        cs = torch.nn.functional.pad(finite.cumsum(1), (1, 0))  # (G, N+1) prefix sums
        c = self._init(xs, n)  # (G, k) sorted
        rows = torch.arange(G, device=b.device).unsqueeze(1)
        for _ in range(self.iters):
            mid = (c[:, 1:] + c[:, :-1]) / 2  # (G, k-1) decision boundaries
            cut = torch.searchsorted(xs, mid.contiguous(), right=True)  # (G, k-1): #elements <= boundary
            cut = torch.minimum(cut, n.unsqueeze(1))
            lo = torch.cat([torch.zeros_like(n).unsqueeze(1), cut], 1)  # (G, k)
            hi = torch.cat([cut, n.unsqueeze(1)], 1)
            count = (hi - lo).double()
            sums = cs[rows, hi] - cs[rows, lo]
            new = torch.where(count > 0, sums / count.clamp_min(1), c)  # empty cluster keeps its centroid
            if torch.equal(new, c):
                break
            c, _ = torch.sort(new, dim=1)
        return KMeansParams(c.float())

    def _init(self, xs: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """(G, k) sorted initial centroids from sorted blocks ``xs`` with ``n`` valid entries each."""
        G, k = xs.shape[0], self.k
        rows = torch.arange(G, device=xs.device).unsqueeze(1)
        last = (n - 1).clamp_min(0).unsqueeze(1)  # (G, 1)
        lo, hi = xs[rows, 0], xs[rows, last]
        lo, hi = torch.where(n.unsqueeze(1) > 0, lo, 0.0), torch.where(n.unsqueeze(1) > 0, hi, 0.0)
        t = torch.linspace(0, 1, k, dtype=xs.dtype, device=xs.device).unsqueeze(0)  # (1, k)
        if self.init == "linear":
            return lo + (hi - lo) * t
        if self.init == "density":  # the weight at CDF = 0, 1/(k-1), ..., 1
            idx = torch.round(t * last).long()
            return torch.where(n.unsqueeze(1) > 0, xs[rows, idx], 0.0)
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        if self.init == "random":  # Forgy: k distinct positions per block
            u = torch.rand(G, xs.shape[1], generator=g).to(xs.device)
            u = torch.where(torch.arange(xs.shape[1], device=xs.device).unsqueeze(0) < n.unsqueeze(1), u, 2.0)
            pick = u.topk(min(k, xs.shape[1]), dim=1, largest=False).indices
            c = xs[rows, pick]
            if c.shape[1] < k:
                c = torch.cat([c, c[:, -1:].expand(G, k - c.shape[1])], 1)
            return torch.sort(torch.where(torch.isfinite(c), c, lo), dim=1)[0]
        return self._kmeanspp(xs, n, g)

    def _kmeanspp(self, xs: torch.Tensor, n: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """D^2 sampling: each next centroid is a weight drawn with probability ~ its squared distance to
        the nearest centroid chosen so far (Arthur & Vassilvitskii 2007, section 2.2)."""
        G, N = xs.shape
        rows = torch.arange(G, device=xs.device)
        valid = torch.arange(N, device=xs.device).unsqueeze(0) < n.unsqueeze(1)  # (G, N)
        x = torch.where(valid, xs, torch.zeros_like(xs))
        first = (torch.rand(G, generator=g).to(xs.device) * n.clamp_min(1)).long().clamp_max(N - 1)
        cents = [x[rows, first]]
        d2 = (x - cents[0].unsqueeze(1)) ** 2 * valid
        for _ in range(self.k - 1):
            cdf = d2.cumsum(1)  # (G, N); inverse-CDF sampling of one index per block
            total = cdf[:, -1:]
            u = torch.rand(G, 1, generator=g, dtype=xs.dtype).to(xs.device) * total
            pick = torch.searchsorted(cdf, u, right=True).squeeze(1)
            uniform = (torch.rand(G, generator=g).to(xs.device) * n.clamp_min(1)).long()
            pick = torch.where(total.squeeze(1) > 0, pick, uniform).clamp_max(N - 1)  # all points covered
            cents.append(x[rows, pick])
            d2 = torch.minimum(d2, (x - cents[-1].unsqueeze(1)) ** 2 * valid)
        return torch.sort(torch.stack(cents, 1), dim=1)[0]

    # -- quantize ----------------------------------------------------------------------------------
    def quantize(self, x: torch.Tensor, params: KMeansParams | None = None) -> torch.Tensor:
        """Index of the nearest centroid (ties go to the lower one), int64, same shape as ``x``."""
        c = (params or self.fit(x)).codebook.to(x.device)  # (G, k)
        b = self.granularity.to_blocks(x.detach()).to(c.dtype)  # (G, N)
        mid = ((c[:, 1:] + c[:, :-1]) / 2).contiguous()  # (G, k-1)
        idx = torch.searchsorted(mid, b.contiguous(), right=False)  # #boundaries strictly below x
        return self.granularity.from_blocks(idx, x.shape)

    def dequantize(self, codes: torch.Tensor, params: KMeansParams | None = None) -> torch.Tensor:
        if params is None:
            raise EffdnnError("kmeans format: dequantize needs the codebook the codes were made with")
        c = params.codebook.to(codes.device)
        b = self.granularity.to_blocks(codes).long()
        return self.granularity.from_blocks(torch.gather(c, 1, b), codes.shape)

    def fake_quantize(self, x: torch.Tensor, params: KMeansParams | None = None) -> torch.Tensor:
        p = params or self.fit(x)
        return ste(x, self.dequantize(self.quantize(x, p), p).to(x.dtype))

    def storage_bits(self, numel: int, params: KMeansParams | None = None) -> int:
        """Indices plus the fp32 codebook of every block."""
        g = 1 if params is None else int(params.codebook.shape[0])
        return int(numel * self.bits + g * self.k * 32)

    @property
    def label(self) -> str:
        return f"kmeans{self.bits} {self.granularity}"


class KMeansOptions(FormatOptions):
    """``format: kmeans``: the initialisation (linear | density | random | kmeans++) and Lloyd iterations."""

    init: str = "linear"
    iters: int = Field(30, ge=0)

    def build(self, bits: int, signed: bool, granularity: Granularity) -> KMeansFormat:
        return KMeansFormat(bits=bits, init=self.init, iters=self.iters, granularity=granularity)  # type: ignore[arg-type]

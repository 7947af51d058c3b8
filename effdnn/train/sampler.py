"""The same global batches in one process and under DDP, whatever the data-set size.

One process: a seeded permutation (seed + epoch) cut into batches of ``batch_size``, the last one
partial. Under DDP every rank takes a strided share of each global batch (positions r, r + W, ...), so
the W shares of batch k are exactly the one-process batch k, the last partial batch included (torch's
``DistributedSampler`` would pad it with duplicates instead). A rank whose share of the last batch is
empty gets one stand-in item of zero weight, because every rank must join each backward pass.
``share_weight`` gives the factor that makes a rank's mean loss count as its share of the global
mean, so DDP's gradient average equals the one-process gradient.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.world, self.rank, self.seed, self.shuffle = n, batch_size, world, rank, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)  # DistributedSampler's permutation, so one-process runs keep theirs
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for k in range(len(self)):
            start, end = k * self.batch_size, min((k + 1) * self.batch_size, self.n)
            share = order[start + self.rank:end:self.world]
            yield share or [order[start]]  # an empty share: a stand-in that share_weight zeroes

    def share_weight(self, k: int) -> tuple[int, float]:
        """(real items in this rank's share of batch ``k``, the factor on its mean loss)."""
        start, end = k * self.batch_size, min((k + 1) * self.batch_size, self.n)
        real = len(range(start + self.rank, end, self.world))
        return real, real * self.world / (end - start)

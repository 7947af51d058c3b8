"""``effdnn run`` that also saves every rank's final (fine-tuned, converted) model of each experiment as
OUT/states/<name>.rank<r>.pt, so the DDP QAT test can compare ranks with each other and with one process.

Usage: python tests/quant/ddp_qat_worker.py RECIPE OUT   (or under torchrun)
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from effdnn.recipe import load_recipe
from effdnn.runner import Runner
from effdnn.utils import distributed as ddp


class StateSavingRunner(Runner):
    def measure(self, model: nn.Module, name: str, wall: float, extra: dict[str, Any]) -> dict[str, Any]:
        folder = self.out / "states"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / f"{name}.rank{ddp.rank()}.pt")
        return super().measure(model, name, wall, extra)


if __name__ == "__main__":
    StateSavingRunner(load_recipe(sys.argv[1]), sys.argv[2]).run()
    ddp.shutdown()

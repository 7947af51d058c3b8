"""One LeNet-5 trained on digits, shared by the PTQ and export tests of a pytest run (trained once)."""
from __future__ import annotations

import functools

import torch

from effdnn.data import load_data
from effdnn.models import build_model
from effdnn.train import TrainSpec, fit


@functools.lru_cache(maxsize=1)
def trained_digits_lenet():
    data = load_data("digits")
    torch.manual_seed(0)
    m = build_model("lenet5", data.in_channels, data.num_classes, data.input_size)
    fit(m, data.train, TrainSpec(epochs=8, lr=0.003), batch_size=64, seed=0, log=False)
    return m.eval(), data

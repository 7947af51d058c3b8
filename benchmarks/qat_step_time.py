"""QAT training-step time as a ratio to the FP32 step of the same model, measured in one process with
the variants interleaved round-robin (so machine load hits all of them alike): effdnn's qat / pact /
lsq on LeNet-5 against torch.ao eager QAT (FakeQuantize, x86 qconfig) of the same network.
Step = zero_grad + forward + cross-entropy + backward + Adam step, batches of 128 28x28 inputs.

    python benchmarks/qat_step_time.py [--rounds 10] [--per-round 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, ".")
import effdnn  # noqa: E402
from effdnn.models.lenet5 import LeNet5  # noqa: E402


def ao_qat(model: nn.Module) -> nn.Module:
    import torch.ao.quantization as tq

    m = copy.deepcopy(model).train()
    f, c = m.features, m.classifier
    m.features = tq.fuse_modules_qat(f, [["0", "1"], ["3", "4"]])
    m.classifier = tq.fuse_modules_qat(c, [["1", "2"], ["3", "4"]])
    m = nn.Sequential(tq.QuantStub(), m, tq.DeQuantStub())
    m.qconfig = tq.get_default_qat_qconfig("x86")
    return tq.prepare_qat(m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batches = [(torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))) for _ in range(8)]
    calib = [b[0] for b in batches[:2]]
    base = LeNet5()
    variants = {
        "fp32": copy.deepcopy(base),
        "effdnn qat w8a8": effdnn.quantize(base, {"method": "qat", "weight": {"bits": 8}, "act": {"bits": 8}}, calib),
        "effdnn pact w4a4": effdnn.quantize(base, {"method": "pact", "weight": {"bits": 4}, "act": {"bits": 4},
                                                "alpha_decay": 0}, calib),  # the L2 term: a loop hook
        "effdnn lsq w4a4": effdnn.quantize(base, {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4}}, calib),
        "torch.ao qat (FakeQuantize)": ao_qat(base),
    }
    steps, times = {}, {k: [] for k in variants}
    for k, m in variants.items():
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)

        def step(m=m, opt=opt, i=[0]):
            x, y = batches[i[0] % len(batches)]
            i[0] += 1
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

        steps[k] = step
        for _ in range(3):
            step()  # warm-up (and torch.ao observer init)
    for _ in range(a.rounds):
        for k, step in steps.items():
            for _ in range(a.per_round):
                t = time.perf_counter()
                step()
                times[k].append((time.perf_counter() - t) * 1e3)
    fp = statistics.median(times["fp32"])
    print(f"command: python benchmarks/qat_step_time.py --rounds {a.rounds} --per-round {a.per_round} --threads {a.threads}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| variant | median step (ms) | ratio to fp32 |\n|---|---|---|")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"| {k} | {med:.2f} | {med / fp:.2f}x |")


if __name__ == "__main__":
    main()

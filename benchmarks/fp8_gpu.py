"""Real fp8 training GEMMs on a GPU (torch._scaled_mm) against bf16, and float emulation on the GPU.

    python benchmarks/fp8_gpu.py [--size 8192] [--hidden 4096] [--tokens 16384] [--layers 4]

Needs a CUDA GPU with fp8 tensor cores (compute capability >= 8.9). Prints markdown tables:
1. one GEMM: bf16 torch.mm vs fp8 torch._scaled_mm (operands already fp8) vs effdnn's fp8_mm (amax
   scaling and casts included), TFLOP/s;
2. a training step (forward, backward, SGD update) of an MLP of ``--layers`` square Linear layers:
   float32, bf16 autocast, effdnn's native fp8 layers (Fp8Linear: all three GEMMs in fp8), as ratios;
3. the same for LeNet-5 on a Fashion-MNIST-sized batch (tiny GEMMs: launch-bound);
4. FloatFormat e5m2 rounding (nearest and stochastic, torch.compile -> Triton) of a 10M-element tensor
   against torch's own cast.
Times are CUDA-event medians over interleaved repeats after warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's effdnn


def cuda_time(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each function, interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times[k].append(a.elapsed_time(b))
    return {k: statistics.median(v) for k, v in times.items()}


def gemm_table(n: int, repeats: int) -> None:
    from effdnn.lowp.fp8_native import fp8_mm

    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    a16, b16 = a.bfloat16(), b.bfloat16()
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()  # b column-major
    one = torch.ones((), device="cuda")
    t = cuda_time({
        "bf16 torch.mm": lambda: a16 @ b16,
        "fp8 e4m3 torch._scaled_mm (fp32 out)": lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float32),
        "fp8 e4m3 torch._scaled_mm (bf16 out)": lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
        "effdnn fp8_mm (amax scaling + casts + GEMM)": lambda: fp8_mm(a, b, torch.float8_e4m3fn, torch.float8_e4m3fn),
    }, repeats)
    flop = 2 * n**3
    bf = t["bf16 torch.mm"]
    print(f"\n### One {n}x{n}x{n} GEMM\n\n| variant | ms | TFLOP/s | speed vs bf16 |\n|---|---|---|---|")
    for k, ms in t.items():
        print(f"| {k} | {ms:.3f} | {flop / ms / 1e9:.0f} | {bf / ms:.2f}x |")


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                autocast: torch.dtype | None) -> None:
    with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def step_table(title: str, make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    from effdnn.lowp.fp8_native import convert_native_fp8

    variants: dict[str, tuple[nn.Module, torch.dtype | None]] = {
        "fp32": (make(), None), "bf16 autocast": (make(), torch.bfloat16), "fp16 autocast": (make(), torch.float16)}
    fp8 = make()
    converted = convert_native_fp8(fp8)
    variants["effdnn fp8 (Fp8Linear / Fp8Conv2d, all layers)"] = (fp8, None)
    fns = {}
    for k, (m, ac) in variants.items():
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        fns[k] = (lambda m=m, opt=opt, ac=ac: _train_step(m, opt, x, y, ac))
    t = cuda_time(fns, repeats)
    bf = t["bf16 autocast"]
    print(f"\n### Training step: {title} ({len(converted)} layers on fp8)\n\n| variant | ms / step | vs fp32 | vs bf16 |\n|---|---|---|---|")
    for k, ms in t.items():
        print(f"| {k} | {ms:.3f} | {t['fp32'] / ms:.2f}x faster | {bf / ms:.2f}x faster |")


def emulation_table(numel: int, repeats: int) -> None:
    from effdnn.formats.float import FP8_E5M2

    x = torch.randn(numel, device="cuda")
    t = cuda_time({
        "effdnn e5m2 round nearest (fp32 out)": lambda: FP8_E5M2.round(x),
        "effdnn e5m2 round stochastic (fp32 out)": lambda: FP8_E5M2.round(x, rounding="stochastic"),
        "effdnn e5m2 encode nearest (1-byte codes)": lambda: FP8_E5M2.encode(x),
        "effdnn e5m2 encode stochastic (1-byte codes)": lambda: FP8_E5M2.encode(x, rounding="stochastic"),
        "torch x.to(float8_e5m2)": lambda: x.to(torch.float8_e5m2),
        "torch x.to(float8_e5m2).float()": lambda: x.to(torch.float8_e5m2).float(),
    }, repeats)
    exact = torch.equal(FP8_E5M2.round(x), x.to(torch.float8_e5m2).float())
    print(f"\n### Float emulation on the GPU, {numel:,} elements (bit-exact with torch's cast: {exact})\n\n"
          "| variant | ms | vs torch cast (same output width) |\n|---|---|---|")
    for k, ms in t.items():
        ref = t["torch x.to(float8_e5m2)"] if "1-byte" in k or k == "torch x.to(float8_e5m2)" else t["torch x.to(float8_e5m2).float()"]
        print(f"| {k} | {ms:.3f} | {ms / ref:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    from effdnn.lowp.fp8_native import fp8_available

    if not (torch.cuda.is_available() and fp8_available(torch.device("cuda"))):
        print("fp8_gpu: needs a CUDA GPU with fp8 tensor cores (compute capability >= 8.9)", file=sys.stderr)
        sys.exit(2)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    torch.manual_seed(0)
    gemm_table(args.size, args.repeats)
    h = args.hidden

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(args.layers):
            layers += [nn.Linear(h, h), nn.ReLU()]
        return nn.Sequential(*layers[:-1]).cuda()

    x = torch.randn(args.tokens, h, device="cuda")
    y = torch.randint(0, h, (args.tokens,), device="cuda")
    step_table(f"MLP {args.layers} x Linear({h}, {h}), {args.tokens} rows", mlp, x, y, args.repeats)

    from effdnn.models import build_model

    def lenet() -> nn.Module:
        torch.manual_seed(0)
        return build_model("lenet5", 1, 10, (28, 28)).cuda()

    xs, ys = torch.randn(128, 1, 28, 28, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    step_table("LeNet-5, batch 128 (28x28)", lenet, xs, ys, args.repeats)
    emulation_table(10_000_000, args.repeats)


if __name__ == "__main__":
    main()

"""End-to-end latency of XNOR-Net models packed with ``pack_model`` (the compiled XNOR-popcount kernels)
against the same float model in torch and in onnxruntime (the fastest fp32 engine), at 1 and 2 threads,
ratios from one run.

    python benchmarks/packed_e2e.py [--batch 256] [--rounds 5] [--threads 1 2] [--vgg-width 0.25] [--no-fuse]

Models: effdnn's zoo ``resnet`` (depth 20, width 16) and ``vgg-small`` (``--vgg-width``), 1 x 28 x 28 inputs,
untrained (latency does not depend on the weights). XNOR-Net (Rastegari et al. 2016) keeps the first and
last layers real-valued; every other convolution runs BN -> sign -> XNOR-popcount (a . b = K - 2
popcount(a xor b)) -> * alpha K in the packed model, with the BatchNorm / ReLU / residual join after it
folded into the kernel and the next binary layer's input handed over as packed bits (``pack_model``'s
default; ``--no-fuse``: every module separate). "agreement" compares the packed model's argmax with the
fake-quantised XNOR model's on the timed batch.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from common import machine, round_robin

import effdnn
import effdnn.techniques
from effdnn.models import build_model
from effdnn.quant import kernels
from effdnn.quant.packed import pack_model


def models(vgg_width: float) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"XNOR-Net ResNet-20 (w16)": build_model("resnet", 1, 10, (28, 28), depth=20, width=16),
            f"XNOR-Net VGG-small (x{vgg_width})": build_model("vgg-small", 1, 10, (28, 28), width=vgg_width)}


def variants(fp: torch.nn.Module, x: torch.Tensor, threads: int, tmp: Path, fuse: bool = True) -> tuple[dict, torch.nn.Module]:
    import onnxruntime as ort

    fp = fp.eval()
    q = effdnn.Experiment(fp, {"quantize": {"method": "xnor"}}, data=[x[:64]]).model.eval()
    packed = pack_model(q, fuse=fuse)
    path = effdnn.export_onnx(fp, x[:2], tmp / f"fp32_{id(fp)}.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {"torch fp32": fp, "onnxruntime fp32": lambda b: sess.run(None, {"input": b.numpy()})[0],
            "effdnn packed XNOR (kernels)": packed}, q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--vgg-width", type=float, default=0.25)
    ap.add_argument("--no-fuse", action="store_true", help="pack_model(fuse=False): no folded epilogues")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print("command: python benchmarks/packed_e2e.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine()}; binary kernels: {kernels.isa()}")
    x = torch.randn(a.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    tmp = Path(tempfile.mkdtemp())
    print("\n| model | threads | torch fp32 ms | onnxruntime fp32 ms | packed XNOR ms | vs torch fp32 | "
          "vs fastest fp32 | argmax agreement with fake-quant |")
    print("|---|---|---|---|---|---|---|---|")
    for name, fp in models(a.vgg_width).items():
        for t in a.threads:
            torch.set_num_threads(t)
            v, q = variants(fp, x, t, tmp, fuse=not a.no_fuse)
            with torch.inference_mode():
                agree = float((v["effdnn packed XNOR (kernels)"](x).argmax(1) == q(x).argmax(1)).float().mean())
            ms = round_robin(v, x, rounds=a.rounds, per_round=1, warmup=2)
            tf, to, tp = ms["torch fp32"], ms["onnxruntime fp32"], ms["effdnn packed XNOR (kernels)"]
            print(f"| {name} | {t} | {tf:.1f} | {to:.1f} | {tp:.1f} | {tf / tp:.2f}x | {min(tf, to) / tp:.2f}x | "
                  f"{agree:.3f} |", flush=True)


if __name__ == "__main__":
    main()

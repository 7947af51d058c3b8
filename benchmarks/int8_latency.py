"""int8 engine latency against fp32, batch 256 and batch 1, every variant interleaved in one process:
torch fp32 eager (as trained, and with BatchNorm folded), effdnn's int8 engine (torch x86 quantized
kernels fed with effdnn's own PTQ params: ``effdnn.quant.deploy_int8.to_int8``), onnxruntime fp32 and
onnxruntime running effdnn's QDQ export (uint8 activations, int8 weights: U8S8), and torch.ao's own
FX int8 model as a reference peer; and what ``effdnn.deploy(q, batch, engine="auto")`` picks for the
quantized model at each batch size (its own measurement), timed in the same rounds.

The int8 engine runs three ways: as calibrated (8-bit inputs and weights, ``reduce_range="none"``: on a
CPU without VNNI its int16 pair sums can overflow), and with the overflowing layers reduced to 7-bit
weights (``"weight"``, what ``to_int8`` does by default on such a CPU) or 7-bit inputs (``"act"``). Each
row gives the accuracy of the engine, the accuracy of the fake-quantized model it computes, and its top-1
agreement with that model ("exact" when it computes it code for code). Usage:

    python benchmarks/int8_latency.py --model lenet5 --threads 1     # or resnet20, mobilenetv2
    # a busy machine: --baseline-epochs 1 --baseline-batches 150 (latency does not depend on training)
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from common import accuracy, baseline, machine, ptq_args, round_robin

import effdnn  # noqa: E402
from effdnn.export import ort_fused_ops  # noqa: E402
from effdnn.quant import fold_batchnorm  # noqa: E402
from effdnn.quant.deploy_int8 import int8_plan, to_int8  # noqa: E402
from effdnn.utils.cpu import has_vnni  # noqa: E402

SPEC = {"method": "ptq", "weight": {"format": "int", "bits": 8, "granularity": "per_channel"},
        "act": {"format": "int", "bits": 8, "calibrator": "kl", "symmetric": False, "signed": False}}


@torch.inference_mode()
def agreement(fn, ref, x: torch.Tensor, bs: int = 500) -> float:
    """Top-1 agreement of ``fn`` with ``ref`` on ``x``."""
    same = sum(int((torch.as_tensor(fn(x[i:i + bs])).argmax(1) == ref(x[i:i + bs]).argmax(1)).sum()) for i in range(0, len(x), bs))
    return same / len(x)


def main() -> None:
    def extra(ap):
        ap.add_argument("--rounds", type=int, default=10)
        ap.add_argument("--baseline-epochs", type=int, default=None)
        ap.add_argument("--baseline-batches", type=int, default=None)

    args = ptq_args("int8_latency.py", 1, extra)
    _, model, calib, xte, yte, _ = baseline(args.model, args.test_images, args.baseline_epochs, args.baseline_batches)
    print(f"machine: {machine()}")
    q = effdnn.quantize(model, SPEC, calib)
    engines = {how: to_int8(q, reduce_range=how) for how in ("none", "weight", "act")}
    print(f"VNNI: {has_vnni()}; " + "; ".join(f"{how}: {int8_plan(e).summary()}" for how, e in engines.items()))
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)

    import onnxruntime as ort
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    fx = prepare_fx(copy.deepcopy(model), tq.get_default_qconfig_mapping("x86"), example_inputs=(calib[0][0][:2],))
    with torch.inference_mode():
        for x, _ in calib:
            fx(x)
    ao_int8 = convert_fx(fx)

    tmp = Path(tempfile.mkdtemp())
    f32 = effdnn.export_onnx(model, xte[:2], tmp / "fp32.onnx")
    qdq = effdnn.export_onnx(q, xte[:2], tmp / "qdq.onnx")
    reduced = int8_plan(engines["weight"]).reference
    qdq7 = effdnn.export_onnx(reduced, xte[:2], tmp / "qdq7.onnx")
    fused = ort_fused_ops(qdq, tmp / "qdq_opt.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1

    def ort_fn(path):
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(s.run(None, {"input": x.numpy()})[0])

    names = {"none": "effdnn int8 engine, W8A8 as calibrated", "weight": "effdnn int8 engine, 7-bit weights where W8A8 overflows",
             "act": "effdnn int8 engine, 7-bit inputs where W8A8 overflows"}
    variants = {"torch fp32 eager": model, "torch fp32 eager, BN folded": folded,
                **{names[how]: e for how, e in engines.items()},
                "onnxruntime fp32": ort_fn(f32), "onnxruntime int8 (effdnn QDQ, U8S8)": ort_fn(qdq),
                "onnxruntime int8 (effdnn QDQ, 7-bit weights where W8A8 overflows)": ort_fn(qdq7),
                "torch.ao FX int8 (own calibration, peer)": ao_int8}
    acc = {k: accuracy(fn, xte, yte) for k, fn in variants.items()}
    computes = {names[how]: int8_plan(e).reference for how, e in engines.items()}
    computes["onnxruntime int8 (effdnn QDQ, U8S8)"] = q
    computes["onnxruntime int8 (effdnn QDQ, 7-bit weights where W8A8 overflows)"] = reduced
    ref_acc = {k: accuracy(r, xte, yte) for k, r in computes.items()}
    agree = {k: agreement(variants[k], r, xte) for k, r in computes.items()}
    print(f"effdnn fake-quant accuracy {accuracy(q, xte, yte):.4f}; onnxruntime fused the QDQ export into "
          f"{fused.get('QLinearConv', 0)} QLinearConv / {fused.get('QGemm', 0) + fused.get('QLinearMatMul', 0)} QGemm+QLinearMatMul"
          f" (of {sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())} Conv2d); ops after fusion: {fused}\n")
    res, picked = {}, {}
    for bs, rounds, per in ((256, args.rounds, 3), (1, args.rounds, 30)):
        dep = effdnn.deploy(q, xte[:bs].contiguous(), threads=args.threads, data=[(xte[:1000], yte[:1000])],
                            workdir=tmp / f"deploy{bs}")
        print(f"batch {bs}: {dep}\n")
        picked[bs] = dep.engine
        res[bs] = round_robin({**variants, "effdnn.deploy (auto)": dep}, xte[:bs].contiguous(), rounds=rounds, per_round=per)
    acc["effdnn.deploy (auto)"] = accuracy(dep, xte, yte)
    base = {bs: res[bs]["torch fp32 eager"] for bs in res}
    fastest = {bs: min(v for k, v in res[bs].items() if "fp32" in k) for bs in res}
    print("| variant | accuracy | fake-quant model it computes: accuracy, agreement | batch 256 ms | vs torch fp32 | vs fastest fp32 "
          "| batch 1 ms | vs torch fp32 | vs fastest fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in [*variants, "effdnn.deploy (auto)"]:
        name = f"{k}: {picked[256]} / {picked[1]}" if k.startswith("effdnn.deploy") else k
        own = f"{ref_acc[k]:.4f}, {agree[k]:.2%}" if k in computes else "-"
        print(f"| {name} | {acc[k]:.4f} | {own} | {res[256][k]:.3f} | {base[256] / res[256][k]:.2f}x | {fastest[256] / res[256][k]:.2f}x "
              f"| {res[1][k]:.3f} | {base[1] / res[1][k]:.2f}x | {fastest[1] / res[1][k]:.2f}x |")


if __name__ == "__main__":
    main()

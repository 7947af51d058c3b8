"""PTQ accuracy of every calibrator / weight format against the model's own FP32, and side by side with
torch.ao PTQ (HistogramObserver) and onnxruntime quantize_static (Entropy, 2048 bins) on the same model
and the same 2048 calibration images. Usage:

    python benchmarks/ptq_fashion.py --model lenet5      # or resnet20
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import accuracy, baseline, machine, ptq_args

import effdnn  # noqa: E402
from effdnn.export import prediction_agreement  # noqa: E402


def timed(fn, repeats: int):
    """(median seconds over ``repeats`` calls, the last call's result)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def ours(model, recipe, calib, xte, yte, only=None, repeats=1):
    rows = []
    for exp in recipe.experiments:
        if only and exp.name not in only:
            continue
        dt, q = timed(lambda: effdnn.quantize(model, exp.quantize, calib), repeats)
        c = effdnn.cost(q, xte[:64])
        rows.append((f"effdnn {exp.name}", accuracy(q, xte, yte), dt, c.size_bytes, q))
    return rows


def torch_ao(model, calib, xte, yte, repeats=1):
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"

    def ptq():
        fx = prepare_fx(copy.deepcopy(model), tq.get_default_qconfig_mapping("x86"), example_inputs=(calib[0][0][:2],))
        with torch.inference_mode():
            for x, _ in calib:
                fx(x)
        return convert_fx(fx)

    dt, q = timed(ptq, repeats)
    return ("torch.ao FX x86 (HistogramObserver)", accuracy(q, xte, yte), dt, None, None)


def ort_entropy(model, calib, xte, yte, tmp: Path, threads: int, repeats: int = 1):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    f32, pre = tmp / "fp32.onnx", tmp / "fp32_pre.onnx"
    effdnn.export_onnx(model, calib[0][0][:2], f32)
    quant_pre_process(str(f32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x.numpy()} for x, _ in calib])

        def get_next(self):
            return next(self.it, None)

    cache = tmp / "entropy2048.json"

    def calibrate():
        c = create_calibrator(str(pre), None, augmented_model_path=str(tmp / "aug.onnx"),
                              calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        c.collect_data(Reader())
        save_tensors_data(c.compute_data(), str(cache))

    calib_s, _ = timed(calibrate, repeats)
    t = time.perf_counter()
    out = tmp / "int8_entropy2048.onnx"
    quantize_static(str(pre), str(out), None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.Entropy,
                    calibration_cache_path=str(cache))
    total_s = calib_s + time.perf_counter() - t
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fn = lambda x: s.run(None, {"input": x.numpy()})[0]  # noqa: E731
    return ("onnxruntime quantize_static Entropy 2048 bins", accuracy(fn, xte, yte), calib_s, total_s)


def main() -> None:
    args = ptq_args("ptq_fashion.py", 2, lambda ap: ap.add_argument(
        "--repeats", type=int, default=3, help="calibration times are the median of this many runs (every tool)"))
    recipe, model, calib, xte, yte, row = baseline(args.model, args.test_images)
    print(f"machine: {machine()}")
    fp32 = accuracy(model, xte, yte)
    print(f"calibration: {sum(len(x) for x, _ in calib)} training images; test: {len(xte)} images\n")
    print(f"calibration times: median of {args.repeats} runs of each tool\n")
    rows = ours(model, recipe, calib, xte, yte, args.only, args.repeats)
    peer_ao = torch_ao(model, calib, xte, yte, args.repeats)
    tmp = Path(tempfile.mkdtemp())
    peer_ort = ort_entropy(model, calib, xte, yte, tmp, args.threads, args.repeats)
    print("| method | accuracy | vs FP32 (points) | calibration s | size KiB |")
    print("|---|---|---|---|---|")
    print(f"| FP32 ({args.model}) | {fp32:.4f} | - | - | {row['size_bytes'] / 1024:.1f} |")
    for name, acc, dt, size, _ in rows:
        print(f"| {name} | {acc:.4f} | {(acc - fp32) * 100:+.2f} | {dt:.3f} | {size / 1024:.1f} |")
    print(f"| {peer_ao[0]} | {peer_ao[1]:.4f} | {(peer_ao[1] - fp32) * 100:+.2f} | {peer_ao[2]:.3f} | - |")
    print(f"| {peer_ort[0]} | {peer_ort[1]:.4f} | {(peer_ort[1] - fp32) * 100:+.2f} | {peer_ort[2]:.3f} "
          f"(+ quantize: {peer_ort[3]:.3f}) | - |")
    kl = next(r for r in rows if r[0].endswith("int8-kl"))
    print(f"\neffdnn KL calibration (whole effdnn.quantize call: copy, BN fold, 16 batches, KL solve) {kl[2]:.3f} s vs "
          f"onnxruntime Entropy-2048 calibration {peer_ort[2]:.3f} s: {peer_ort[2] / kl[2]:.1f}x faster; "
          f"accuracy {kl[1]:.4f} vs {peer_ort[1]:.4f}")
    path = effdnn.export_onnx(kl[4], xte[:2], tmp / "effdnn_kl_qdq.onnx")
    agree, worst = prediction_agreement(kl[4], path, [xte[i:i + 1000] for i in range(0, len(xte), 1000)], threads=args.threads)
    print(f"effdnn int8-kl exported as QDQ ONNX, run in onnxruntime: top-1 agreement with the fake-quantized PyTorch "
          f"model {agree * 100:.2f}% of {len(xte)} test images (max |logit diff| {worst:.4f})")


if __name__ == "__main__":
    main()

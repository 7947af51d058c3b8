"""all-MiniLM-L6-v2: Wanda against magnitude pruning (50%, 2:4; no fine-tuning) and the int8 ONNX file.

Pruning also by SparseGPT (one pass, and sequential in groups of 6 layers = one transformer block).
Protocol (issue 20): 256 fixed sentences (recipes/minilm_data.py), mean-pooled last hidden state,
cosine against the FP32 model per sentence (mean / min); 4 batches of 32 calibrate. ONNX: FP32 export
against effdnn's W8A8 PTQ (per-channel int8 weights stored as int8 initializers, static per-tensor int8
activations, int8 embedding rows), file size ratio, onnxruntime latency on a batch of 32 sentences x 45
tokens at --threads intra-op threads (the two sessions interleaved, median of --reps), cosine.

    .venv/bin/python benchmarks/minilm_prune_export.py [--threads 2] [--reps 10] [--calibrator mse] [--prune-only]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))
from tests.torchvision_shim import install  # noqa: E402

install()
import torch  # noqa: E402

import effdnn  # noqa: E402
from effdnn.export import ort_fused_ops  # noqa: E402
from effdnn.export.onnx import onnx_session, run_onnx  # noqa: E402


def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    return (h * m).sum(1) / m.sum(1)


def cosine(embed, batches, ref) -> tuple[float, float]:
    with torch.no_grad():
        c = torch.cat([torch.nn.functional.cosine_similarity(embed(b), r) for b, r in zip(batches, ref)])
    return float(c.mean()), float(c.min())


def torch_embed(model):
    return lambda b: pool(model(**b).last_hidden_state, b["attention_mask"])


def onnx_embed(sess):
    return lambda b: pool(torch.from_numpy(run_onnx(sess, b)), b["attention_mask"])


def latency(sessions: dict, batch: dict, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        run_onnx(s, batch)
    for _ in range(reps):  # interleaved: load changes hit both alike
        for k, s in sessions.items():
            t = time.perf_counter()
            run_onnx(s, batch)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--calibrator", default="mse")
    ap.add_argument("--prune-only", action="store_true", help="the pruning table only (no ONNX export)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import minilm_data
    import minilm_model

    model, tok = minilm_model.load(), minilm_model.tokenizer()
    sents = minilm_data.sentences()
    batches = [dict(tok(sents[i:i + 32], padding=True, truncation=True, return_tensors="pt")) for i in range(0, 256, 32)]
    calib = batches[:4]
    with torch.no_grad():
        ref = [torch_embed(model)(b) for b in batches]
    rows = []
    for name, spec in [("magnitude 50%", {"method": "magnitude", "sparsity": 0.5}),
                       ("wanda 50%", {"method": "wanda", "sparsity": 0.5, "batches": 4}),
                       ("sparsegpt 50%", {"method": "sparsegpt", "sparsity": 0.5, "batches": 4}),
                       ("sparsegpt 50% sequential (group 6)", {"method": "sparsegpt", "sparsity": 0.5, "batches": 4,
                                                               "group": 6}),
                       ("magnitude 2:4", {"method": "magnitude", "nm": "2:4"}),
                       ("wanda 2:4", {"method": "wanda", "nm": "2:4", "batches": 4}),
                       ("sparsegpt 2:4", {"method": "sparsegpt", "nm": "2:4", "batches": 4})]:
        t = time.perf_counter()
        pruned = effdnn.prune(model, {**spec, "exclude": ["pooler*"]}, calib)
        rows.append((name, *cosine(torch_embed(pruned), batches, ref), time.perf_counter() - t))
    print(f"| pruning (no fine-tuning) | cosine mean | cosine min | time s |\n|---|---|---|---|")
    for name, mean, low, t in rows:
        print(f"| {name} | {mean:.4f} | {low:.4f} | {t:.1f} |", flush=True)
    if args.prune_only:
        return

    t = time.perf_counter()
    q = effdnn.quantize(model, {"method": "ptq", "act": {"calibrator": args.calibrator}}, calib)
    calib_s = time.perf_counter() - t
    fixed = dict(tok(sents[:32], padding="max_length", max_length=45, truncation=True, return_tensors="pt"))
    with tempfile.TemporaryDirectory() as tmp:
        f32 = effdnn.export_onnx(model, fixed, Path(tmp) / "f32.onnx")
        i8 = effdnn.export_onnx(q, fixed, Path(tmp) / "int8.onnx", embeddings="int8")
        fused = ort_fused_ops(i8, Path(tmp) / "opt.onnx")
        ratio = os.path.getsize(i8) / os.path.getsize(f32)
        sessions = {"fp32": onnx_session(f32, args.threads), "int8": onnx_session(i8, args.threads)}
        lat = latency(sessions, fixed, args.reps)
        c32, c8 = cosine(onnx_embed(sessions["fp32"]), batches, ref), cosine(onnx_embed(sessions["int8"]), batches, ref)
        ctorch = cosine(torch_embed(q), batches, ref)
        print(f"\nW8A8 PTQ ({args.calibrator} activations) calibrated in {calib_s:.1f} s; fake-quantized torch cosine "
              f"{ctorch[0]:.4f} / {ctorch[1]:.4f}; onnxruntime fused {fused.get('MatMulIntegerToFloat', 0)} "
              f"MatMulIntegerToFloat, {fused.get('QLinearMatMul', 0)} QLinearMatMul")
        print("| onnxruntime | file MB | file ratio | latency ms | latency ratio | cosine mean | cosine min |\n|---|---|---|---|---|---|---|")
        print(f"| FP32 | {os.path.getsize(f32) / 1e6:.1f} | 1 | {lat['fp32']:.0f} | 1 | {c32[0]:.4f} | {c32[1]:.4f} |")
        print(f"| effdnn int8 QDQ | {os.path.getsize(i8) / 1e6:.1f} | {ratio:.3f} | {lat['int8']:.0f} | "
              f"{lat['int8'] / lat['fp32']:.3f} | {c8[0]:.4f} | {c8[1]:.4f} |")
    print(f"\nthreads {args.threads}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

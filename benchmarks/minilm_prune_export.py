"""all-MiniLM-L6-v2: Wanda against magnitude pruning (50%, 2:4; no fine-tuning) and the int8 ONNX file.

Pruning also by SparseGPT (one pass, and sequential in groups of 6 layers = one transformer block).
Protocol (issue 20): 256 fixed sentences (recipes/minilm_data.py), mean-pooled last hidden state,
cosine against the FP32 model per sentence (mean / min); 4 batches of 32 calibrate. ONNX: FP32 export
against effdnn's int8 files (int8 weight initializers, int8 embedding rows): static per-tensor W8A8 as
QDQ, and per-token dynamic activations + SmoothQuant written as integer ops (``dynamic_activations=
"integer"``: uint8 codes x int8 weights in MatMulInteger); file size ratio, the integer kernels in
onnxruntime's optimized graph, latency on a batch of 32 sentences x 45 tokens at --threads intra-op
threads (all sessions interleaved, median of --reps), cosine of what onnxruntime computes.

    .venv/bin/python benchmarks/minilm_prune_export.py [--threads 2] [--reps 10] [--prune-only | --onnx-only [--only W7A8]]
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
from minilm_model import mean_pool as pool  # noqa: E402

import effdnn  # noqa: E402
from effdnn.export import ort_fused_ops  # noqa: E402
from effdnn.export.onnx import onnx_session, run_onnx  # noqa: E402


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
    ap.add_argument("--prune-only", action="store_true", help="the pruning table only (no ONNX export)")
    ap.add_argument("--onnx-only", action="store_true", help="the ONNX table only (no pruning)")
    ap.add_argument("--only", default="", help="comma-separated substrings of the ONNX variants to run")
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
    if args.onnx_only:
        return onnx_table(model, tok, sents, batches, calib, ref, args)
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

    onnx_table(model, tok, sents, batches, calib, ref, args)


W7A8_SQ = {"method": "smoothquant", "alpha": 0.5, "weight": {"bits": 7, "granularity": "per_channel"},
           "act": {"bits": 8, "dynamic": "per_token"}}
W8A7_SQ = {"method": "smoothquant", "alpha": 0.5, "act": {"bits": 7, "dynamic": "per_token"}}
ONNX_SPECS = {  # name: (quantization spec, export options)
    "static W8A8 (MSE activations), QDQ": ({"method": "ptq", "act": {"calibrator": "mse"}}, {}),
    "W7A8 per-token + SmoothQuant a=0.5, integer (standard ops)": (W7A8_SQ, {"dynamic_activations": "integer"}),
    "W7A8 per-token + SmoothQuant a=0.5, integer (ort kernel)": (W7A8_SQ, {"dynamic_activations": "ort"}),
    "W8A7 per-token + SmoothQuant a=0.5, integer (ort kernel)": (W8A7_SQ, {"dynamic_activations": "ort"}),
}

def onnx_table(model, tok, sents, batches, calib, ref, args) -> None:
    """FP32 against effdnn's int8 ONNX files: size, fused kernels, cosine, interleaved latency."""
    fixed = dict(tok(sents[:32], padding="max_length", max_length=45, truncation=True, return_tensors="pt"))
    keep = [k for k in args.only.split(",") if k]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"FP32": effdnn.export_onnx(model, fixed, Path(tmp) / "f32.onnx")}
        notes, quantized = {}, {}
        for i, (name, (spec, opts)) in enumerate(ONNX_SPECS.items()):
            if keep and not any(k in name for k in keep):
                continue
            key = repr(spec)
            if key not in quantized:  # one PTQ per spec, exported each way
                t = time.perf_counter()
                quantized[key] = (effdnn.quantize(model, spec, calib), time.perf_counter() - t)
            q, secs = quantized[key]
            files[name] = effdnn.export_onnx(q, fixed, Path(tmp) / f"q{i}.onnx", embeddings="int8", **opts)
            fused = ort_fused_ops(files[name], Path(tmp) / f"opt{i}.onnx")
            kernels = {k: v for k, v in fused.items() if "Integer" in k or k.startswith("QLinear") or k in ("MatMul", "FusedMatMul", "Attention")}
            notes[name] = (notes.get(name, (None,))[0] or cosine(torch_embed(q), batches, ref), secs, kernels)
        sessions = {k: onnx_session(f, args.threads) for k, f in files.items()}
        lat = latency(sessions, fixed, args.reps)
        size32 = os.path.getsize(files["FP32"])
        print("| onnxruntime | file MB (x FP32) | latency ms (x FP32) | cosine mean / min | torch fake-quant cosine | PTQ s | kernels |")
        print("|---|---|---|---|---|---|---|")
        for k, f in files.items():
            c = cosine(onnx_embed(sessions[k]), batches, ref)
            (ct, secs, kern) = notes.get(k, ((1.0, 1.0), 0.0, {}))
            print(f"| {k} | {os.path.getsize(f) / 1e6:.1f} ({os.path.getsize(f) / size32:.3f}x) | {lat[k]:.0f} "
                  f"({lat[k] / lat['FP32']:.3f}x) | {c[0]:.4f} / {c[1]:.4f} | {ct[0]:.4f} / {ct[1]:.4f} | {secs:.1f} | "
                  f"{', '.join(f'{n} {v}' for n, v in sorted(kern.items()))} |", flush=True)
    print(f"\nthreads {args.threads}, {args.reps} interleaved reps (median), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()

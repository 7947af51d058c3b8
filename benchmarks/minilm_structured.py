"""all-MiniLM-L6-v2, structured pruning: whole attention heads and MLP width removed through the
dependency graph (``effdnn.prune(model, {"method": "channel", ...})``; the hidden size, which is the
model's output, stays), then label-free recovery by feature distillation from the FP32 model.

Protocol (issue 20): 256 fixed sentences (recipes/minilm_data.py), mean-pooled last hidden state, cosine
against FP32 per sentence (mean / min). Saliency from 4 calibration batches of 32 other sentences.
Recovery: ``fit`` with ``distill: {feature: cosine}`` (1 - cosine of the mean-pooled embeddings against
the FP32 teacher, no labels) on --train unlabelled sentences (another seed, none of the 256), --epochs
epochs, AdamW lr --lr, cosine schedule, batch 32. Latency: one batch of 32 sentences x 45 tokens, torch
at --threads threads and onnxruntime (the exported files), each variant interleaved with its FP32,
median of --reps.

    .venv/bin/python benchmarks/minilm_structured.py [--ratios 0.25,0.5] [--epochs 2] [--train 1024] [--threads 2]
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
from effdnn.export.onnx import onnx_session, run_onnx  # noqa: E402
from effdnn.train import TrainSpec, fit  # noqa: E402


def cosine(model, batches, ref) -> tuple[float, float]:
    with torch.no_grad():
        c = torch.cat([torch.nn.functional.cosine_similarity(pool(model(**b).last_hidden_state, b["attention_mask"]), r)
                       for b, r in zip(batches, ref)])
    return float(c.mean()), float(c.min())


def interleaved(runs: dict, reps: int) -> dict[str, float]:
    """Median ms of each callable, all run in turn ``reps`` times (load changes hit every one alike)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()
    for _ in range(reps):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def shape(model) -> str:
    att = model.encoder.layer[0].attention.self
    return f"{att.num_attention_heads} heads, MLP {model.encoder.layer[0].intermediate.dense.out_features}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--train-threads", type=int, default=1, help="threads while distilling (a shared machine)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import minilm_data
    import minilm_model

    model, tok = minilm_model.load(), minilm_model.tokenizer()
    enc = lambda ss, **kw: dict(tok(ss, return_tensors="pt", truncation=True, **({"padding": True} | kw)))  # noqa: E731
    sents = minilm_data.sentences()
    batches = [enc(sents[i:i + 32]) for i in range(0, 256, 32)]
    other = minilm_data.sentences(128, seed=1)
    calib = [enc(other[i:i + 32]) for i in range(0, 128, 32)]
    train = enc(minilm_data.sentences(args.train, seed=7), padding="max_length", max_length=64)
    items = [{k: v[i] for k, v in train.items()} for i in range(args.train)]
    fixed = enc(sents[:32], padding="max_length", max_length=45)
    with torch.no_grad():
        ref = [pool(model(**b).last_hidden_state, b["attention_mask"]) for b in batches]
    params = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731  (embeddings stay)
    rows = [("FP32", shape(model), params(model), (1.0, 1.0), (1.0, 1.0), 0.0, 0.0, {"torch": 1.0, "ort": 1.0}, {})]
    tmp = Path(tempfile.mkdtemp(prefix="minilm-structured-"))
    f32_path = effdnn.export_onnx(model, fixed, tmp / "f32.onnx")
    for r in [float(v) for v in args.ratios.split(",")]:
        t = time.perf_counter()
        pruned = effdnn.prune(model, {"method": "channel", "sparsity": r, "exclude": ["pooler*"]}, calib)
        prune_s = time.perf_counter() - t
        before = cosine(pruned, batches, ref)
        t = time.perf_counter()
        spec = TrainSpec(epochs=args.epochs, lr=args.lr, optimizer="adamw", schedule="cosine", distill={"feature": "cosine"})
        torch.set_num_threads(args.train_threads)
        fit(pruned, items, spec, batch_size=32, teacher=model, log=False)
        torch.set_num_threads(args.threads)
        pruned.eval()
        train_s = time.perf_counter() - t
        after = cosine(pruned, batches, ref)
        path = effdnn.export_onnx(pruned, fixed, tmp / f"p{r}.onnx")
        s32, sp = onnx_session(f32_path, args.threads), onnx_session(path, args.threads)
        with torch.inference_mode():
            ms = interleaved({"t32": lambda: model(**fixed), "tp": lambda: pruned(**fixed),
                              "o32": lambda: run_onnx(s32, fixed), "op": lambda: run_onnx(sp, fixed)}, args.reps)
        ratio = {"torch": ms["tp"] / ms["t32"], "ort": ms["op"] / ms["o32"]}
        rows.append((f"channel {r:.0%} (heads + MLP width, l1)", shape(pruned), params(pruned), before, after,
                     prune_s, train_s, ratio, ms))
        print(f"{r}: {shape(pruned)} cos {before[0]:.4f} -> {after[0]:.4f}; torch {ms['tp']:.0f} / {ms['t32']:.0f} ms, "
              f"onnxruntime {ms['op']:.0f} / {ms['o32']:.0f} ms", flush=True)
    p32 = rows[0][2]
    print(f"\nrecovery: {args.epochs} epochs of feature distillation (cosine) on {args.train} unlabelled sentences, "
          f"AdamW lr {args.lr}, batch 32")
    print("| pruning | shape | encoder parameters (x FP32) | cosine mean / min, no recovery | after distillation | "
          "latency torch (x FP32) | latency onnxruntime (x FP32) | prune s | distill s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, sh, n, b, a, ps, ts, ratio, ms in rows:
        lt = f"{ms['tp']:.0f} ms ({ratio['torch']:.2f}x)" if ms else "1.00x"
        lo = f"{ms['op']:.0f} ms ({ratio['ort']:.2f}x)" if ms else "1.00x"
        print(f"| {name} | {sh} | {n / 1e6:.1f} M ({n / p32:.2f}x) | {b[0]:.4f} / {b[1]:.4f} | {a[0]:.4f} / {a[1]:.4f} | "
              f"{lt} | {lo} | {ps:.1f} | {ts:.0f} |")
    print(f"\nthreads {args.threads}, {args.reps} interleaved reps (median), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

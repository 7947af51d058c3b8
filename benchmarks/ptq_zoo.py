"""PTQ int8 and its QDQ export on every torchvision classification model (random weights).

Per model: BatchNorm statistics are set on the calibration batches (cumulative averages), then
effdnn PTQ (int8 per-channel weights, max-calibrated int8 activations, BN folded) and torch.ao FX PTQ
(x86 default qconfig) are calibrated on the same batches; the table gives each one's output cosine
against FP32 on a held-out batch, the QDQ ONNX export's cosine (onnxruntime against effdnn's
PyTorch model: graph as written, and with onnxruntime's int8 fusion), and effdnn's own noise floor
(its model run channels-last against contiguous: float summation order alone), with the export's
cosine against that channels-last run too (a different summation order of the same model). Where
the export's cosine is below 0.999, ``first_flip`` names the first quantizer whose codes onnxruntime
computes differently (``effdnn.export.qdq_divergence``): how many codes, by how much, and how close
their x / s lie to a rounding boundary (float order: one code, within a few ulps of k + 1/2).

    python benchmarks/ptq_zoo.py [--models resnet18 swin_t ...] [--out ptq_zoo.jsonl] [--table-only]
                                 [--threads 1] [--time-limit 1200] [--mem-limit-gb 14] [--seed 0]

Each model runs at the smallest square input its forward accepts (tried in SIZES order); ViTs are
built with ``image_size=32`` (their position embedding fixes the size). Rows are appended to the JSON
lines file as they finish, so a long run can be stopped and resumed (done models are skipped). Each
model runs in its own (forked) process under a wall-clock and an address-space limit; a model that exceeds
either is a row saying so. Models run smallest first (torchvision's parameter counts); several processes
can share one file: each claims a model (a file in ``<out>.claims/``, stale once its process is gone)
before running it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from torchvision_shim import install  # noqa: E402

install()
import torch  # noqa: E402

import effdnn  # noqa: E402
from effdnn.export.onnx import export_onnx  # noqa: E402
from effdnn.export.qdq_divergence import first_divergence  # noqa: E402

SIZES = (32, 64, 75, 96, 128, 160, 224, 299)
KWARGS = {"vit_b_16": {"image_size": 32}, "vit_b_32": {"image_size": 32}, "vit_l_16": {"image_size": 32},
          "vit_l_32": {"image_size": 32}, "vit_h_14": {"image_size": 28}}
BATCH, CALIB_BATCHES = 8, 4
SEED = 0  # --seed: the weights' seed; the data's is SEED + 1


def cosine(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _runs(model: torch.nn.Module, size: int) -> bool:
    """Whether ``model`` runs at ``size`` both in eval mode (measured) and in train mode (the BatchNorm
    statistics pass, where auxiliary classifiers run too)."""
    try:
        with torch.no_grad():
            for train in (False, True):
                model.train(train)
                model(torch.randn(2, 3, size, size))
        return True
    except Exception:  # noqa: BLE001 - too small for this model
        return False
    finally:
        model.eval()


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The model with random weights and the smallest input size its forward accepts."""
    import torchvision

    torch.manual_seed(SEED)
    model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {})).eval()
    for size in ([KWARGS[name]["image_size"]] if name in KWARGS else SIZES):
        if _runs(model, size):
            return model, size
    raise RuntimeError(f"{name}: no input size in {SIZES} works")


def set_bn_stats(model: torch.nn.Module, calib: list[torch.Tensor]) -> None:
    """BatchNorm running statistics = the cumulative average over the calibration batches."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for x in calib:
            model(x)
    model.eval()


def torch_ao_cosine(model: torch.nn.Module, calib: list[torch.Tensor], x: torch.Tensor, ref: torch.Tensor) -> float | str:
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    try:
        fx = prepare_fx(copy.deepcopy(model), tq.get_default_qconfig_mapping("x86"), example_inputs=(calib[0],))
        with torch.inference_mode():
            for c in calib:
                fx(c)
            q = convert_fx(fx)
            return cosine(q(x), ref)
    except Exception as e:  # noqa: BLE001 - torch.ao cannot trace / convert this model: say why
        return f"fails: {type(e).__name__}: {' '.join(str(e).split())[:60]}"


def ort_output(path: Path, x: torch.Tensor, optimize: bool) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def divergence(q: torch.nn.Module, path: Path, x: torch.Tensor) -> dict:
    """The first quantizer whose codes onnxruntime computes differently (``first_divergence``)."""
    try:
        d = first_divergence(q, path, x)
    except Exception as e:  # noqa: BLE001 - a diagnostic column: say why it is missing
        return {"first_flip": f"not measured: {type(e).__name__}"}
    if d.first is None:
        return {"first_flip": "none", "float_order": True}
    f = d.first
    return {"first_flip": f"{f.name}: {f.flipped}/{f.total} codes, max {f.max_codes} off, |x/s-(k+1/2)| <= {d.boundary_distance:.1e}",
            "float_order": d.float_order}


def run_one(name: str) -> dict:
    row: dict = {"model": name}
    t0 = time.perf_counter()
    model, size = build(name)
    row["size"], row["params_m"] = size, sum(p.numel() for p in model.parameters()) / 1e6
    g = torch.Generator().manual_seed(SEED + 1)
    calib = [torch.randn(BATCH, 3, size, size, generator=g) for _ in range(CALIB_BATCHES)]
    x = torch.randn(BATCH, 3, size, size, generator=g)
    set_bn_stats(model, calib)
    with torch.no_grad():
        ref = model(x)
    spec = {"method": "ptq", "weight": {"granularity": "per_channel"}, "act": {"calibrator": "max"}}
    q = effdnn.quantize(model, spec, calib_data=calib)
    with torch.no_grad():
        out = q(x)
        row["effdnn_cos"] = cosine(out, ref)
        q_cl = copy.deepcopy(q).to(memory_format=torch.channels_last)
        out_cl = q_cl(x.contiguous(memory_format=torch.channels_last))
        row["self_noise_cos"] = cosine(out_cl, out)
    del q_cl
    row["torch_ao_cos"] = torch_ao_cosine(model, calib, x, ref)
    with tempfile.TemporaryDirectory() as d:
        try:
            path = export_onnx(q, x, Path(d) / "q.onnx")
            written = ort_output(path, x, optimize=False)
            row["qdq_cos"], row["qdq_nhwc_cos"] = cosine(written, out), cosine(written, out_cl)
            row["qdq_fused_cos"] = cosine(ort_output(path, x, optimize=True), out)
            if row["qdq_cos"] < 0.999:  # where onnxruntime's codes first differ from effdnn's, and why
                row.update(divergence(q, path, x))
        except Exception as e:  # noqa: BLE001 - the export or onnxruntime refuses: the table says which
            row["qdq_cos"] = row["qdq_fused_cos"] = f"fails: {' '.join(str(e).split())[:80]}"
    row["seconds"] = time.perf_counter() - t0
    return row


def fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    cols = ["model", "size", "params_m", "effdnn_cos", "torch_ao_cos", "qdq_cos", "self_noise_cos", "qdq_nhwc_cos",
            "qdq_fused_cos", "first_flip", "seconds"]
    head = ["model", "input", "params (M)", "effdnn PTQ cos", "torch.ao FX cos", "QDQ cos (ORT as written)",
            "effdnn NHWC vs NCHW cos", "QDQ vs effdnn NHWC cos", "QDQ cos (ORT fused)",
            "first code ORT computes differently", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [fmt(r.get(c, "")) if c not in ("params_m", "seconds") else f"{r.get(c, 0):.1f}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _forked(name: str, limit_bytes: int, conn) -> None:
    """A forked child (the imports already done): the row of ``name`` or its error, through ``conn``."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    try:
        row = run_one(name)
    except MemoryError:
        row = {"model": name, "error": "memory"}
    except Exception as e:  # noqa: BLE001 - one model's failure is a row of the table, not the end of the run
        memory = any(k in str(e) for k in ("DefaultCPUAllocator", "bad_alloc", "Cannot allocate"))
        row = {"model": name, "error": "memory" if memory else f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"}
    conn.send(row)
    conn.close()


def run_child(name: str, args: argparse.Namespace) -> dict:
    """``name`` measured in a forked child process under the time and memory limits; its row."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked, args=(name, int(args.mem_limit_gb * 2**30), send))
    proc.start()
    send.close()
    row = recv.recv() if recv.poll(args.time_limit) else None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if row is None:
        why = f"exceeds the {args.time_limit:.0f} s time limit" if proc.exitcode in (None, -9) else \
            f"exceeds the {args.mem_limit_gb:g} GiB memory limit (exit {proc.exitcode})"
        return {"model": name, "error": why}
    if row.get("error") == "memory":
        row["error"] = f"exceeds the {args.mem_limit_gb:g} GiB memory limit"
    return row


def by_size(names: list[str]) -> list[str]:
    """``names`` smallest first, by the parameter counts torchvision's weight metadata lists."""
    from torchvision.models import get_model_weights

    def params(name: str) -> int:
        try:
            return int(get_model_weights(name).DEFAULT.meta["num_params"])
        except (KeyError, ValueError, AttributeError):
            return 0
    return sorted(names, key=params)


def _num(v) -> bool:
    return isinstance(v, float)


def summary(rows: list[dict], total: int) -> str:
    """The three targets over the measured rows: PTQ runs, effdnn >= torch.ao, QDQ >= 0.999."""
    ok = [r for r in rows if _num(r.get("effdnn_cos"))]
    both = [r for r in ok if _num(r.get("torch_ao_cos"))]
    beat = [r for r in both if r["effdnn_cos"] >= r["torch_ao_cos"]]
    exported = [r for r in ok if _num(r.get("qdq_cos"))]
    agree = [r for r in exported if r["qdq_cos"] >= 0.999]
    below = [r for r in exported if r["qdq_cos"] < 0.999]
    order = [r for r in below if r.get("float_order")]
    dist = [float(m.group(1)) for r in order if (m := re.search(r"<= ([0-9.e+-]+)", r.get("first_flip", "")))]
    lines = ["| target | result |", "|---|---|",
             f"| PTQ int8 runs on every model | {len(ok)} of {len(rows)} measured ({total} in torchvision; "
             f"{len(rows) - len(ok)} failed or over the limits) |",
             f"| effdnn PTQ cosine >= torch.ao FX's where torch.ao runs | {len(beat)} of {len(both)} "
             f"(torch.ao fails on {len(ok) - len(both)}) |",
             f"| QDQ export (ORT as written) >= 0.999 against effdnn | {len(agree)} of {len(exported)} that export "
             f"({len(ok) - len(exported)} do not export) |",
             f"| ... the {len(below)} below 0.999: the first code ORT computes differently is one code off by one at "
             f"an x/s within {max(dist, default=0):.1e} of k + 1/2 (float order) | {len(order)} of {len(below)} |"]
    return "\n".join(lines)


def claim(claims: Path, name: str) -> bool:
    """Whether this process may run ``name``: it created its claim file, or the claimant is gone."""
    claims.mkdir(exist_ok=True)
    path = claims / name
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # a live process runs it
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # stale: its process is gone
    return False


def read_rows(out: Path) -> dict[str, dict]:
    return {json.loads(l)["model"]: json.loads(l) for l in out.read_text().splitlines() if l.strip()} if out.exists() else {}


def main() -> None:
    import torchvision

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--out", default="ptq_zoo.jsonl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=1200.0, help="seconds per model")
    ap.add_argument("--mem-limit-gb", type=float, default=14.0, help="address space per model")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="weights' seed (the data's: seed + 1), for the spread between seeds")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    global SEED
    SEED = args.seed
    out = Path(args.out)
    names = args.models or by_size(torchvision.models.list_models(module=torchvision.models))
    claims = out.with_name(out.name + ".claims")
    for name in [] if args.table_only else names:
        if name in read_rows(out) or not claim(claims, name):
            continue
        row = run_child(name, args)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    done = read_rows(out)
    print(summary([done[n] for n in names if n in done], len(names)))
    print()
    print(table([done[n] for n in names if n in done]))


if __name__ == "__main__":
    main()

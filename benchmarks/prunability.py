"""Prunability of torchvision's classification zoo: effdnn's structured pruning vs Torch-Pruning.

    nice python benchmarks/prunability.py [--models resnet18,vit_b_16] [--out runs/prunability.jsonl]
                                          [--tools effdnn,tp] [--timeout 900]
    python benchmarks/prunability.py --summarize runs/prunability.jsonl [more.jsonl]   # table of finished rows
    nice -n -10 python benchmarks/prunability.py --timing mnasnet0_5,mobilenet_v3_small --repeats 15
    nice python benchmarks/prunability.py --gap regnet_y_400mf,resnext50_32x4d   # the MAC gap, layer by layer

Every torchvision classification model (random weights; BatchNorm statistics set on 3 random batches;
64x64 inputs where the model allows it) loses 30% of its channels by L1 norm, the classifier's
outputs kept, once with effdnn (``prune_channels``, saliency l1) and once with Torch-Pruning's
``MagnitudePruner(pruning_ratio=0.3)`` (p=1 importance, the last Linear ignored). Per tool: the MAC
reduction (effdnn.cost on the same input), whether the pruned model runs with the same output shape
and exports to ONNX (and whether the unpruned one does), and the seconds to build the graph and prune.
Each model and tool runs in its own subprocess (a crash or a hang costs one cell). Prints a markdown table and
the summary: prunable count (runs, same shape, >= 1.5x MAC reduction, exports when the unpruned model
does), models below 0.95x Torch-Pruning's reduction, and the time ratio.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torchvision 0.28's wheel links the CUDA build of torch: with the CPU build its C++ ops are missing and
# `import torchvision` fails registering their fake kernels. The model definitions are pure Python, so
# the shim (tests/torchvision_shim.py) makes those registrations no-ops during the import. Installed
# before anything can import torchvision (transformers would).
from tests.torchvision_shim import install as _install_torchvision_shim

_install_torchvision_shim()

import torch
from torch import nn

SIZES = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}  # otherwise 64
KWARGS = {"vit": {"image_size": 64}, "vit_h_14": {"image_size": 56}}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Random weights, BatchNorm statistics from 3 random batches, eval mode; and the example input."""
    import torchvision

    torch.manual_seed(0)
    kw = dict(KWARGS.get(name, KWARGS["vit"] if name.startswith("vit") else {}))
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, weights=None, **kw)
    size = SIZES.get(name, 64)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, size, size))
    return model.eval(), torch.randn(1, 3, size, size)


def _exports(model: nn.Module, x: torch.Tensor) -> bool:
    import effdnn

    with tempfile.TemporaryDirectory() as d:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                effdnn.export_onnx(model, x, Path(d) / "m.onnx")
            return True
        except Exception:  # noqa: BLE001
            return False


def _macs(model: nn.Module, x: torch.Tensor) -> float:
    import effdnn

    return float(effdnn.cost(model, x).macs)


def prune_effdnn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    from effdnn.prune.structured import StructuredConfig, prune_channels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_channels(model, x, StructuredConfig(sparsity=0.3, saliency="l1"), measure=False)
    return model


def prune_tp(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=0.3, ignored_layers=last, num_heads=heads)
        pruner.step()
    return model


def one(name: str, tools: list[str]) -> dict:
    torch.set_num_threads(1)
    import torch_pruning  # noqa: F401

    import effdnn.prune.structured  # noqa: F401  (imports outside the timings)

    model, x = build(name)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    row = {"model": name, "input": x.shape[-1], "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "base_exports": _exports(model, x)}
    macs = _macs(model, x)
    for tool in tools:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            m = (prune_effdnn if tool == "effdnn" else prune_tp)(m, x)
            row[f"{tool}_s"] = time.perf_counter() - t0
            with torch.no_grad():
                row[f"{tool}_runs"] = tuple(m(x).shape) == shape
            row[f"{tool}_macs"] = macs / _macs(m, x)
            row[f"{tool}_exports"] = _exports(m, x) if row["base_exports"] else None
        except Exception as e:  # noqa: BLE001 (any failure of user code is reported in one line)
            row[f"{tool}_s"] = time.perf_counter() - t0
            row[f"{tool}_runs"] = False
            row[f"{tool}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


def prunable(r: dict, tool: str = "effdnn") -> bool:
    return bool(r.get(f"{tool}_runs")) and r.get(f"{tool}_macs", 0) >= 1.5 and \
        (r.get(f"{tool}_exports") is not False)


def table(rows: list[dict]) -> str:
    def f(v, fmt="{:.2f}"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    def ok(r, tool):
        if f"{tool}_runs" not in r and "error" not in r:
            return "not run"
        if not r.get(f"{tool}_runs"):
            return "timeout" if "timeout" in str(r.get(f"{tool}_error", r.get("error", ""))) else "fails"
        return ("yes" if r.get(f"{tool}_exports") else "no" if r.get(f"{tool}_exports") is False else "n/a")

    lines = [("| model | input | effdnn MAC red. | TP MAC red. | effdnn runs / exports | TP runs / exports | "
             "effdnn s | TP s |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {f(r.get('effdnn_macs') if r.get('effdnn_runs') else None)} | "
                     f"{f(r.get('tp_macs') if r.get('tp_runs') else None)} | {ok(r, 'effdnn')} | {ok(r, 'tp')} | "
                     f"{f(r.get('effdnn_s'), '{:.1f}')} | {f(r.get('tp_s'), '{:.1f}')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    n = len(rows)
    ok = [r["model"] for r in rows if prunable(r)]
    tp_ok = [r["model"] for r in rows if prunable(r, "tp")]
    both = [r for r in rows if r.get("effdnn_runs") and r.get("tp_runs")]
    below = [f"{r['model']} ({r['effdnn_macs']:.2f} vs {r['tp_macs']:.2f})" for r in both
             if r["effdnn_macs"] < 0.95 * r["tp_macs"]]
    slower = [f"{r['model']} ({r['effdnn_s']:.1f} vs {r['tp_s']:.1f} s)" for r in both if r["effdnn_s"] > r["tp_s"]]
    te, tt = sum(r["effdnn_s"] for r in both), sum(r["tp_s"] for r in both)
    not_run = [r["model"] for r in rows if "tp_runs" not in r and "error" not in r]
    return (f"effdnn prunable: {len(ok)}/{n}; Torch-Pruning prunable: {len(tp_ok)}/{n - len(not_run)} "
            f"(not run: {', '.join(not_run) or 'none'})\n"
            f"not prunable by effdnn: {', '.join(sorted({r['model'] for r in rows} - set(ok))) or 'none'}\n"
            f"both run: {len(both)}; effdnn below 0.95x TP's MAC reduction: {len(below)} {'; '.join(below)}\n"
            f"time (both run): effdnn {te:.1f} s, TP {tt:.1f} s; effdnn slower on {len(slower)}: {'; '.join(slower)}")


def timing(names: list[str], repeats: int) -> str:
    """Graph + prune seconds of both tools, interleaved in one process (2 warm-up rounds; medians of
    wall-clock and process CPU time: CPU time is what a loaded machine disturbs least)."""
    import statistics

    torch.set_num_threads(1)
    lines = ["| model | effdnn s (wall) | TP s (wall) | effdnn / TP | effdnn s (CPU) | TP s (CPU) | effdnn / TP |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        model, x = build(name)
        got: dict[str, list[tuple[float, float]]] = {"effdnn": [], "tp": []}
        for i in range(repeats + 2):
            for tool, fn in (("effdnn", prune_effdnn), ("tp", prune_tp)):
                m = copy.deepcopy(model)
                w, c = time.perf_counter(), time.process_time()
                fn(m, x)
                if i >= 2:
                    got[tool].append((time.perf_counter() - w, time.process_time() - c))
        med = {t: [statistics.median(v[k] for v in got[t]) for k in (0, 1)] for t in got}
        lines.append(f"| {name} | {med['effdnn'][0]:.3f} | {med['tp'][0]:.3f} | {med['effdnn'][0] / med['tp'][0]:.2f} | "
                     f"{med['effdnn'][1]:.3f} | {med['tp'][1]:.3f} | {med['effdnn'][1] / med['tp'][1]:.2f} |")
    return "\n".join(lines)


def _layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs of every Conv2d / Linear on ``x`` (forward hooks)."""
    out: dict[str, int] = {}

    def hook(name: str):
        return lambda mod, i, o: out.__setitem__(name, o.numel() * (mod.weight[0].numel() if isinstance(mod, nn.Conv2d)
                                                                      else mod.in_features))
    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return out


def _width(m: nn.Module, side: str) -> int:
    if isinstance(m, nn.Conv2d):
        return m.in_channels if side == "in" else m.out_channels
    return m.in_features if side == "in" else m.out_features


def mac_gap(names: list[str]) -> str:
    """Where effdnn's and Torch-Pruning's MAC reductions differ, layer by layer: the share of the grouped
    convolutions' channels each removes (more than one input per group), and the difference of
    remaining MACs (effdnn minus TP, millions) in the grouped convolutions, in the other layers of a
    grouped convolution's width (input or output: the 1x1s that feed and read them), and in the rest
    (with the largest difference of output widths there)."""
    torch.set_num_threads(1)
    lines = []
    for name in names:
        model, x = build(name)
        base = dict(model.named_modules())
        m0 = _layer_macs(model, x)
        pruned = {t: fn(copy.deepcopy(model), x) for t, fn in (("effdnn", prune_effdnn), ("tp", prune_tp))}
        macs = {t: _layer_macs(m, x) for t, m in pruned.items()}
        mods = {t: dict(m.named_modules()) for t, m in pruned.items()}
        grouped = [n for n in m0 if isinstance(base[n], nn.Conv2d) and base[n].groups > 1
                   and base[n].in_channels // base[n].groups > 1]
        widths = {base[n].in_channels for n in grouped}
        around = [n for n in m0 if n not in grouped and (_width(base[n], "in") in widths or _width(base[n], "out") in widths)]
        rest = [n for n in m0 if n not in grouped and n not in around]

        def gap(ns: list[str], macs: dict = macs) -> float:
            return sum(macs["effdnn"][n] - macs["tp"][n] for n in ns) / 1e6

        share = {t: (f"{1 - sum(mods[t][n].out_channels for n in grouped) / sum(base[n].out_channels for n in grouped):.1%}"
                     if grouped else "n/a (none)") for t in mods}
        dev = max((abs(_width(mods["effdnn"][n], "out") - _width(mods["tp"][n], "out")) for n in rest), default=0)
        red = {t: sum(m0.values()) / sum(macs[t].values()) for t in macs}
        lines.append(f"{name}: conv/linear MAC reduction effdnn {red['effdnn']:.2f}, TP {red['tp']:.2f}; grouped "
                     f"convolutions' channels removed effdnn {share['effdnn']}, TP {share['tp']}; MACs left "
                     f"effdnn - TP (M): grouped {gap(grouped):.2f}, their width's other layers {gap(around):.2f}, "
                     f"rest {gap(rest):.2f} (output widths there differ by <= {dev})")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def _run_one(name: str, tool: str, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--tools", tool]
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {f"{tool}_runs": False, f"{tool}_error": f"timeout {timeout} s", f"{tool}_s": float(timeout)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {f"{tool}_runs": False, f"{tool}_error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--tools", default="effdnn,tp")
    ap.add_argument("--out", default="runs/prunability.jsonl")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    ap.add_argument("--summarize", nargs="*", default=None, help="print the table and summary of these jsonl files")
    ap.add_argument("--timing", default="", help="models: graph + prune seconds of both tools, interleaved in one "
                    "process, medians of --repeats")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--gap", default="", help="models: where effdnn's and TP's MAC reductions differ, layer by layer")
    args = ap.parse_args()
    tools = args.tools.split(",")
    if args.gap:
        mac_gap(args.gap.split(","))
        return
    if args.timing:
        import torch_pruning  # noqa: F401

        import effdnn.prune.structured  # noqa: F401  (imports outside the timings)

        print(timing(args.timing.split(","), args.repeats))
        return
    if args.summarize is not None:
        rows = {}
        for f in args.summarize or [args.out]:
            for line in Path(f).read_text().splitlines():
                row = json.loads(line)
                rows[row["model"]] = {**rows.get(row["model"], {}), **row}  # a later run's fields win
        rows = [rows[k] for k in sorted(rows)]
        print(table(rows))
        print(summary(rows))
        return
    if args.one:
        print(json.dumps(one(args.one, tools)))
        return
    import torchvision

    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"command: python {' '.join(sys.argv)}", flush=True)
    for name in names:
        row = {"model": name, "input": "-"}
        for tool in tools:  # one process per tool: a tool that hangs costs its own column only
            row.update({k: v for k, v in _run_one(name, tool, args.timeout).items() if k not in row or k == "input"})
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(table(rows))
    print(summary(rows))


if __name__ == "__main__":
    main()

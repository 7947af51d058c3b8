"""Every torchvision 0.28 classification model under the emulated precisions (fp16, bf16, fp8, hfp8).

    nice python benchmarks/lowp_zoo.py [--threads 1] [--out runs/lowp-zoo.md] [--max-params 30e6]
                                       [--accumulate fp16|fp32] [--timed mobilenet_v3_small resnet18] [--only NAME ...]

For each model (``torchvision.models.list_models(module=torchvision.models)``, 10 classes): conversion in
every mode, on the meta device (all 80 must convert: every Linear / convolution / attention layer
reached); for models under ``--max-params`` parameters, one training step per mode (batch 2, at the
smallest input in 32..299 the model accepts; the step checks that every converted layer ran through the
emulation and that the loss is finite); for the ``--timed`` models, the step time of each mode as a ratio
to a float32 step of the same model (median of 3 steps after 2 warm-up steps, batch 2). fp8 / hfp8 accumulate in FP16 (1,6,9)
chunks of 64 (the paper's setting; ``--accumulate fp32``: float32 GEMMs on the 8-bit operands).
Writes a Markdown table to ``--out`` (rewritten after every model) and stdout, and a JSON line per model
to ``--out`` + ``.jsonl``. Needs the ``zoo`` extra (torchvision); imports it through tests/torchvision_shim.py.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's effdnn and its tests/ helpers, run from anywhere

from tests.torchvision_shim import import_torchvision  # noqa: E402
from tests.lowp.zoo import MODES, convert, converted, gemm_count, one_step, smallest_input, step_seconds  # noqa: E402


def _config(mode: str, accumulate: str) -> dict[str, Any]:
    return {"accumulate": accumulate} if mode in ("fp8", "hfp8") else {}


@contextlib.contextmanager
def _meta_parameters() -> Iterator[None]:
    """Parameters registered on the meta device (no memory, no initialization: vit_h_14, regnet_y_128gf);
    the builders' own computations (regnet's widths) still run on the CPU."""
    real = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        real(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = real  # type: ignore[method-assign]


def check_conversion(tv: Any, name: str, accumulate: str) -> tuple[int, int, dict[str, str]]:
    """(parameters, GEMM layers, per-mode conversion result) with the parameters on the meta device."""
    with _meta_parameters():
        base = tv.models.get_model(name, num_classes=10)
    params, want = sum(p.numel() for p in base.parameters()), gemm_count(base)
    result = {}
    for mode in MODES:
        m = copy.deepcopy(base)
        try:
            convert(m, mode, **_config(mode, accumulate))
            got = len(converted(m))
            result[mode] = "ok" if got == want else f"converted {got}/{want}"
        except Exception as e:  # noqa: BLE001 - reported in the table
            result[mode] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return params, want, result


def train_steps(tv: Any, name: str, accumulate: str) -> tuple[int, dict[str, str]]:
    """(input size, per-mode step result): one emulated training step per mode."""
    torch.manual_seed(0)
    base = tv.models.get_model(name, num_classes=10)
    size = smallest_input(base)
    out = {}
    for mode in MODES:
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        try:
            loss = one_step(m, convert(m, mode, **_config(mode, accumulate)), size)
            idle = [n for n, layer in converted(m) if layer.lowp_calls == 0]
            ok = torch.isfinite(torch.tensor(loss)) and not idle
            out[mode] = (f"ok {time.perf_counter() - t0:.0f}s" if ok else
                         f"FAIL loss={loss:.3g} not run: {idle[:3]}")
        except Exception as e:  # noqa: BLE001
            out[mode] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return size, out


def step_ratios(tv: Any, name: str, size: int, accumulate: str) -> dict[str, float]:
    torch.manual_seed(0)
    base = tv.models.get_model(name, num_classes=10)
    t32 = step_seconds(copy.deepcopy(base), [], size)
    ratios = {"fp32_s": t32}
    for mode in MODES:
        m = copy.deepcopy(base)
        ratios[mode] = step_seconds(m, convert(m, mode, **_config(mode, accumulate)), size) / t32
    return ratios


def table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "params (M)", "converted layers", "input", *[f"{m} step" for m in MODES], "step time / fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        conv = "all " + str(r["layers"]) if all(v == "ok" for v in r["convert"].values()) else \
            "; ".join(f"{m}: {v}" for m, v in r["convert"].items() if v != "ok")
        steps = [r.get("steps", {}).get(m, "-") for m in MODES]
        ratio = r.get("ratios")
        rt = ", ".join(f"{m} {ratio[m]:.1f}x" for m in MODES) + f" (fp32 {ratio['fp32_s']:.2f}s)" if ratio else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} | {conv} | {r.get('size', '-')} | "
                     + " | ".join(steps) + f" | {rt} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/lowp-zoo.md")
    ap.add_argument("--max-params", type=float, default=30e6, help="train one step on models below this size")
    ap.add_argument("--accumulate", choices=["fp16", "fp32"], default="fp16", help="fp8 / hfp8 accumulation")
    ap.add_argument("--timed", nargs="*", default=["mobilenet_v3_small", "resnet18"])
    ap.add_argument("--only", nargs="*", help="only these models")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    command = f"command: python benchmarks/lowp_zoo.py {' '.join(sys.argv[1:])}"
    print(command, flush=True)
    tv = import_torchvision()
    if tv is None:
        sys.exit("torchvision is not installed: pip install -e .[zoo]")
    names = args.only or tv.models.list_models(module=tv.models)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:  # conversion of all first (fast, on the meta device), small models first
        params, layers, result = check_conversion(tv, name, args.accumulate)
        rows.append({"model": name, "params": params, "layers": layers, "convert": result})
    rows.sort(key=lambda r: (r["model"] not in args.timed, r["params"]))
    for r in rows:
        if r["params"] < args.max_params:
            r["size"], r["steps"] = train_steps(tv, r["model"], args.accumulate)
            if r["model"] in args.timed:
                r["ratios"] = step_ratios(tv, r["model"], r["size"], args.accumulate)
        with open(str(out) + ".jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        out.write_text(command + "\n\n" + table(rows) + "\n")
        print(f"{r['model']}: {r.get('steps', '-')}", flush=True)
    converted_all = sum(all(v == "ok" for v in r["convert"].values()) for r in rows)
    print(f"\n{table(rows)}\n\n{converted_all}/{len(rows)} models convert in every mode\n{command}")


if __name__ == "__main__":
    main()

"""The bad-input table: every failure caused by the user's input is one line naming the input and what
is wrong, with exit code 2 (the CLI) or an EffdnnError (the Python API), never a traceback.

Each row: (kind, id, how to provoke it, a fragment of the expected line). CLI rows run ``effdnn``'s
``main`` in this process (a subprocess per row would take minutes); ``tests/test_cli.py`` runs the
command itself as a subprocess for a few rows of each kind.
"""
from __future__ import annotations

import io
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

import effdnn
from effdnn import cli
from effdnn.errors import EffdnnError
from effdnn.models import build_model

TINY = {"name": "t", "seed": 0, "data": {"name": "synthetic", "batch_size": 16, "kwargs": {"n_train": 64, "n_test": 32}},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}}, "baseline": {"epochs": 1}}
IMG = {**TINY, "data": {"name": "synthetic", "batch_size": 16,
                        "kwargs": {"n_train": 64, "n_test": 32, "channels": 1, "size": 8}},
       "model": {"name": "lenet5"}}


def recipe(base: dict = TINY, **changes: Any) -> str:
    return yaml.safe_dump({**base, **changes}, sort_keys=False)


def exp(**blocks: Any) -> str:
    return recipe(experiments=[{"name": "e", **blocks}])


USER = '''
import sys
import torch
from torch.utils.data import TensorDataset


def data(kind="ok"):
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 4, (40,))
    tx, ty = torch.randn(20, 1, 8, 8), torch.randint(0, 4, (20,))
    info = {}
    if kind == "float_labels":
        y = y.float()
    elif kind == "negative_labels":
        y[3] = -1
    elif kind == "labels_too_big":
        info = {"num_classes": 3}
        y[0] = 3
    elif kind == "shape_mismatch":
        tx = torch.randn(20, 1, 9, 9)
    elif kind == "empty_train":
        x, y = x[:0], y[:0]
    elif kind == "empty_test":
        tx, ty = tx[:0], ty[:0]
    elif kind == "nan":
        x[5, 0, 1, 1] = float("nan")
    elif kind == "inf_test":
        tx[0, 0, 0, 0] = float("inf")
    elif kind == "2d_inputs":
        return TensorDataset(torch.randn(40, 8, 8), y), TensorDataset(torch.randn(20, 8, 8), ty)
    elif kind == "one_item":
        return [1, 2, 3], [4]
    elif kind == "not_a_pair":
        return TensorDataset(x, y)
    elif kind == "raises":
        raise ValueError("no data here")
    elif kind == "exits":
        sys.exit(4)
    return TensorDataset(x, y), TensorDataset(tx, ty), info


def net(kind="ok", **kw):
    if kind == "raises":
        raise RuntimeError("cannot build")
    if kind == "exits":
        sys.exit(3)
    if kind == "not_a_module":
        return 42
    if kind == "forward_fails":
        return torch.nn.Linear(10, 4)
    if kind == "wrong_output":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
    if kind == "forward_exits":
        class Quit(torch.nn.Module):
            def forward(self, x):
                sys.exit(5)
        return Quit()
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
'''


@dataclass
class Case:
    kind: str
    id: str
    needle: str
    cli: list[str] | None = None  # effdnn arguments ({tmp} is the test folder)
    files: dict[str, str | bytes] = field(default_factory=dict)
    api: Callable[[Path], Any] | None = None
    code: int = 2


def c(kind: str, id: str, needle: str, *args: str, **files: str | bytes) -> Case:
    return Case(kind, id, needle, cli=list(args), files={k.replace("__", "."): v for k, v in files.items()})


def a(kind: str, id: str, needle: str, fn: Callable[[Path], Any]) -> Case:
    return Case(kind, id, needle, api=fn)


def run_r(needle: str, text: str, kind: str, id: str, *extra: str) -> Case:
    return c(kind, id, needle, "run", "r.yaml", "--out", "o", *extra, r__yaml=text)


# ---------------------------------------------------------------------------------------------------
RECIPE_CASES = [
    run_r("malformed YAML at line 2, column 1", "name: [x\n", "recipe", "malformed-yaml"),
    run_r("empty file", "", "recipe", "empty"),
    run_r("expected a mapping at the top level, got list", "- a\n- b\n", "recipe", "a-list"),
    run_r("nonsense: unknown key", recipe(nonsense=1), "recipe", "unknown-top-key"),
    run_r("seed: Input should be a valid integer", recipe(seed="abc"), "recipe", "seed-string"),
    run_r("data.batch_size: Input should be greater than or equal to 1", recipe(data={**TINY["data"], "batch_size": 0}), "recipe", "batch-0"),
    run_r("data.nope: unknown key", recipe(data={**TINY["data"], "nope": 1}), "recipe", "data-key"),
    run_r("model.nope: unknown key", recipe(model={"name": "mlp", "nope": 1}), "recipe", "model-key"),
    run_r("baseline.lr", recipe(baseline={"epochs": 1, "lr": -1}), "recipe", "lr-negative"),
    run_r("baseline.epochs", recipe(baseline={"epochs": -2}), "recipe", "epochs-negative"),
    run_r("baseline.optimizer", recipe(baseline={"epochs": 1, "optimizer": "lion"}), "recipe", "optimizer"),
    run_r("baseline.schedule", recipe(baseline={"epochs": 1, "schedule": "linear-ish"}), "recipe", "schedule"),
    run_r("baseline.momentum : unknown key", recipe(baseline={"epochs": 1, "momentum ": 0.9}), "recipe", "key-typo-space"),
    run_r("experiments[0].name", recipe(experiments=[{"name": "../x"}]), "recipe", "exp-name-slash"),
    run_r("experiments[0].name", recipe(experiments=[{"name": "baseline"}]), "recipe", "exp-name-baseline"),
    run_r("experiment name 'a' used twice", recipe(experiments=[{"name": "a"}, {"name": "a"}]), "recipe", "exp-dup"),
    run_r("experiments[0].name: Field required", recipe(experiments=[{"quantize": {"method": "ptq"}}]), "recipe", "exp-no-name"),
    run_r("experiments[0].qantize: unknown key", exp(qantize={"method": "ptq"}), "recipe", "block-typo"),
    run_r("unknown quantize method 'ptqq'", exp(quantize={"method": "ptqq"}), "recipe", "quant-method"),
    run_r("unknown prune method 'magnitud'", exp(prune={"method": "magnitud"}), "recipe", "prune-method"),
    run_r("unknown precision method 'fp7'", exp(precision={"train": "fp7"}), "recipe", "precision-method"),
    run_r("unknown compress method 'zip'", exp(compress={"method": "zip"}), "recipe", "compress-method"),
    run_r("unknown activation_sparsity method", exp(activation_sparsity={"method": "gelu"}), "recipe", "act-method"),
    run_r("quantize.method: missing", exp(quantize={"weight": {"bits": 8}}), "recipe", "quant-no-method"),
    run_r("experiments[0].quantize: Input should be a valid dictionary", exp(quantize="ptq"), "recipe", "block-not-mapping"),
    run_r("quantize.weight: int format: bits must be an integer in 2..16", exp(quantize={"method": "ptq", "weight": {"bits": 1}}), "recipe", "bits-1"),
    run_r("quantize.act: int format: bits must be an integer in 2..16", exp(quantize={"method": "ptq", "act": {"bits": 99}}), "recipe", "bits-99"),
    run_r("unknown format 'posit'", exp(quantize={"method": "ptq", "weight": {"format": "posit"}}), "recipe", "format"),
    run_r("unknown calibrator 'entropy'", exp(quantize={"method": "ptq", "act": {"calibrator": "entropy"}}), "recipe", "calibrator"),
    run_r("preset: not an option of format 'int'", exp(quantize={"method": "ptq", "weight": {"preset": "fp16"}}), "recipe", "foreign-option"),
    run_r("iters: not an option of format 'float'", exp(quantize={"method": "ptq", "weight": {"format": "float", "iters": 3}}), "recipe", "foreign-option-2"),
    run_r("give exp_bits and man_bits together", exp(quantize={"method": "ptq", "weight": {"format": "float", "exp_bits": 4}}), "recipe", "float-half"),
    run_r("quantize.weight.granularity", exp(quantize={"method": "ptq", "weight": {"granularity": "per_row"}}), "recipe", "granularity"),
    run_r("quantize.act.percentile", exp(quantize={"method": "ptq", "act": {"calibrator": "percentile", "percentile": 120}}), "recipe", "percentile"),
    run_r("quantize.calib_batches", exp(quantize={"method": "ptq", "calib_batches": 0}), "recipe", "calib-batches"),
    run_r("prune.sparsity", exp(prune={"method": "magnitude", "sparsity": 1.5}), "recipe", "sparsity-1.5"),
    run_r("prune.sparsity", exp(prune={"method": "magnitude", "sparsity": -0.1}), "recipe", "sparsity-negative"),
    run_r("prune.schedule", exp(prune={"method": "magnitude", "schedule": "sometimes"}), "recipe", "schedule-name"),
    run_r("prune.scope", exp(prune={"method": "magnitude", "scope": "universe"}), "recipe", "scope"),
    run_r("experiments[0].prune: nm: needs 1 <= N < M, got '5:4'", exp(prune={"method": "magnitude", "nm": "5:4"}), "recipe", "nm"),
    run_r("experiments[0].finetune.epochs", exp(finetune={"epochs": -1}), "recipe", "finetune-epochs"),
    run_r("experiments[0].finetune.distill.alpha", exp(finetune={"epochs": 1, "distill": {"alpha": 2}}), "recipe", "distill-alpha"),
    run_r("experiments[0].finetune.swa", exp(finetune={"epochs": 1, "swa": {"epochs": 5}}), "recipe", "swa-too-long"),
    run_r("compress.bits", exp(compress={"method": "deep-compression", "bits": 0}), "recipe", "dc-bits"),
    run_r("compress.index_bits", exp(compress={"method": "deep-compression", "index_bits": "many"}), "recipe", "dc-index-bits"),
    run_r("cost.example_batch", recipe(cost={"example_batch": 0}), "recipe", "cost-batch"),
    run_r("cost.nope: unknown key", recipe(cost={"nope": 1}), "recipe", "cost-key"),
    run_r("device: unknown device 'tpu9'", recipe(device="tpu9"), "recipe", "device"),
    run_r("cuda asked for but no CUDA device is available", recipe(device="cuda"), "recipe", "device-cuda"),
    run_r("experiments[0] (e): quantize ptq + precision", exp(quantize={"method": "ptq"}, precision={"train": "bf16"}), "recipe", "refused-pair"),
    run_r("prune + precision fp8", exp(prune={"method": "magnitude", "sparsity": 0.5}, precision={"train": "fp8"}), "recipe", "refused-pair-fp8"),
    run_r("pattern 'lyr.*' matches no layer", exp(quantize={"method": "ptq", "keep_fp": ["lyr.*"]}), "recipe", "keep-fp-nothing"),
    run_r("pattern 'conv9' matches no layer", exp(prune={"method": "magnitude", "sparsity": 0.5, "layers": ["conv9"]}), "recipe", "prune-layers-nothing"),
    run_r("pattern 'x.*' matches no layer", exp(prune={"method": "magnitude", "sparsity": 0.5, "exclude": ["x.*"]}), "recipe", "prune-exclude-nothing"),
    run_r("must be divisible", recipe(data={**TINY["data"], "batch_size": 15}), "recipe", "batch-ddp-divisible-ok-alone", ),
]
# a batch of 15 is fine alone: that row checks the run passes the batch-size check, so drop it
RECIPE_CASES = [r for r in RECIPE_CASES if r.id != "batch-ddp-divisible-ok-alone"]

DATA_CASES = [
    run_r("unknown data set 'cifar'", recipe(data={"name": "cifar"}), "data", "unknown-name"),
    run_r("data: bad option for 'synthetic'", recipe(data={"name": "synthetic", "kwargs": {"colour": 1}}), "data", "bad-kwarg"),
    run_r("dataset-fashion-mnist", recipe(data={"name": "fashion-mnist", "root": "/nonexistent"}), "data", "fashion-missing"),
    *[c("data", kind, needle, "run", "r.yaml", "--out", "o", u__py=USER,
        r__yaml=recipe(IMG, data={"name": "u.py:data", "kwargs": {"kind": kind}}, model={"name": "u.py:net"}))
      for kind, needle in [
          ("float_labels", "train labels must be integer class indices, got torch.float32"),
          ("negative_labels", "train labels must lie in 0..3, found -1"),
          ("labels_too_big", "train labels must lie in 0..2, found 3"),
          ("shape_mismatch", "train inputs are (1, 8, 8) but test inputs are (1, 9, 9)"),
          ("empty_train", "the train split is empty"),
          ("empty_test", "the test split is empty"),
          ("nan", "the train inputs hold NaN or Inf"),
          ("inf_test", "the test inputs hold NaN or Inf"),
          ("2d_inputs", "inputs must be tensors shaped (C, H, W) or (F,)"),
          ("one_item", "its datasets must yield (input, label) pairs"),
          ("not_a_pair", "must return (train_dataset, test_dataset[, info])"),
          ("raises", "u.py:data: raised ValueError: no data here"),
          ("exits", "u.py:data: called sys.exit(4)"),
      ]],
    c("data", "missing-file", "file 'nope.py' not found", "run", "r.yaml", r__yaml=recipe(data={"name": "nope.py:data"})),
    c("data", "missing-function", "has no function 'absent'", "run", "r.yaml", u__py=USER,
      r__yaml=recipe(data={"name": "u.py:absent"})),
    c("data", "import-error", "needs the Python package", "run", "r.yaml", u__py="import not_a_module_anywhere\n",
      r__yaml=recipe(data={"name": "u.py:data"})),
    c("data", "syntax-error", "SyntaxError", "run", "r.yaml", u__py="def data(:\n", r__yaml=recipe(data={"name": "u.py:data"})),
]

MODEL_CASES = [
    run_r("unknown model 'alexnet'", recipe(model={"name": "alexnet"}), "model", "unknown-name"),
    run_r("model.kwargs: bad option for 'mlp'", recipe(model={"name": "mlp", "kwargs": {"depth": 3}}), "model", "bad-kwarg"),
    run_r("model.kwargs.hidden: layer widths must be positive integers, got [-5]", recipe(model={"name": "mlp", "kwargs": {"hidden": [-5]}}), "model", "negative-hidden"),
    run_r("model: its forward fails on the data (input (2, 1, 2, 2))", recipe(IMG, data={"name": "synthetic", "batch_size": 16, "kwargs": {"n_train": 32, "n_test": 16, "channels": 1, "size": 2}}),
          "model", "lenet5-2x2"),
    *[c("model", kind, needle, "run", "r.yaml", "--out", "o", u__py=USER,
        r__yaml=recipe(IMG, data={"name": "u.py:data"}, model={"name": "u.py:net", "kwargs": {"kind": kind}}))
      for kind, needle in [
          ("raises", "u.py:net: raised RuntimeError: cannot build"),
          ("exits", "u.py:net: called sys.exit(3)"),
          ("not_a_module", "must return a torch.nn.Module"),
          ("forward_fails", "model: its forward fails on the data (input (2, 1, 8, 8)): RuntimeError"),
          ("wrong_output", "expected logits of shape (2, 4)"),
          ("forward_exits", "model: its forward fails on the data (input (2, 1, 8, 8)): called sys.exit(5)"),
      ]],
    c("model", "missing-file", "file 'nope.py' not found", "run", "r.yaml", r__yaml=recipe(model={"name": "nope.py:net"})),
    c("model", "missing-function", "has no function 'absent'", "run", "r.yaml", u__py=USER,
      r__yaml=recipe(model={"name": "u.py:absent"})),
]

PATH_CASES = [
    c("paths", "recipe-missing", "file not found", "run", "none.yaml"),
    c("paths", "recipe-is-folder", "file not found", "run", "."),
    c("paths", "out-below-file", "is a file, not a folder", "run", "r.yaml", "--out", "f.txt/o", r__yaml=recipe(), f__txt="x"),
    c("paths", "out-is-file", "is a file, not a folder", "run", "r.yaml", "--out", "f.txt", r__yaml=recipe(), f__txt="x"),
    c("paths", "recipe-output-below-file", "is a file, not a folder", "run", "r.yaml", r__yaml=recipe(output="f.txt/o"), f__txt="x"),
    c("paths", "sensitivity-out-below-file", "sensitivity: --out", "sensitivity", "r.yaml", "--out", "f.txt/rows.json",
      r__yaml=recipe(IMG), f__txt="x"),
    c("paths", "sensitivity-out-folder", "is a folder, not a file", "sensitivity", "r.yaml", "--out", ".", r__yaml=recipe(IMG)),
    c("paths", "report-missing", "report.json: not found", "report", "nowhere"),
    c("paths", "report-invalid-json", "not valid JSON", "report", ".", report__json='{"baseline": 1'),
    c("paths", "report-not-a-report", "not an effdnn report", "report", ".", report__json='[1, 2]'),
    c("paths", "report-row-missing", "baseline lacks", "report", ".", report__json='{"baseline": {}, "experiments": []}'),
    c("paths", "report-row-strings", "baseline.accuracy must be a number, got 'high'", "report", ".",
      report__json='{"baseline": {"name": "b", "accuracy": "high", "size_bytes": 1, "compression_ratio": 1, "params": 1, '
                   '"macs": 1, "bitops": 1, "energy_pj": 1, "weight_sparsity": 0, "activation_sparsity": 0, '
                   '"wall_time_s": 1}, "experiments": []}'),
    c("paths", "energy-table-missing", "energy table", "run", "r.yaml", r__yaml=recipe(cost={"energy_table": "none.yaml"})),
    c("paths", "checkpoint-missing", "nothere.pt: file not found", "run", "r.yaml", r__yaml=recipe(baseline={"checkpoint": "nothere.pt"})),
]


def _pickled_object() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Case("x", "y", "z")}, buf)
    return buf.getvalue()


def _state(model: torch.nn.Module, **changes: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save({**model.state_dict(), **changes}, buf)
    return buf.getvalue()


_MLP = build_model("mlp", 1, 4, (8, 8), hidden=[8])
CHECKPOINT_CASES = [
    c("checkpoint", "junk", "unreadable", "run", "r.yaml", r__yaml=recipe(baseline={"checkpoint": "c.pt"}), c__pt=b"\x00garbage"),
    c("checkpoint", "empty", "unreadable", "run", "r.yaml", r__yaml=recipe(baseline={"checkpoint": "c.pt"}), c__pt=b""),
    c("checkpoint", "pickled-object", "c.pt", "run", "r.yaml", r__yaml=recipe(baseline={"checkpoint": "c.pt"}), c__pt=_pickled_object()),
    c("checkpoint", "not-a-dict", "expected a state dict", "run", "r.yaml", r__yaml=recipe(baseline={"checkpoint": "c.pt"}),
      c__pt=(lambda b: (torch.save([1, 2], b), b.getvalue())[1])(io.BytesIO())),
    c("checkpoint", "other-model", "does not fit the model", "run", "r.yaml", r__yaml=recipe(IMG, baseline={"checkpoint": "c.pt"}),
      c__pt=_state(_MLP)),
    c("checkpoint", "nan-weights", "holds NaN or Inf values", "run", "r.yaml",
      r__yaml=recipe(TINY, data={"name": "synthetic", "batch_size": 16, "kwargs": {"n_train": 64, "n_test": 32, "channels": 1, "size": 8, "num_classes": 4}},
                     baseline={"checkpoint": "c.pt"}),
      c__pt=_state(_MLP, **{k: torch.full_like(v, float("nan")) for k, v in list(_MLP.state_dict().items())[:1]})),
]


def _container(tmp: Path) -> tuple[torch.nn.Module, Path]:
    m = build_model("mlp", 1, 4, (8, 8), hidden=[8])
    pm = effdnn.prune(m, {"method": "magnitude", "sparsity": 0.5})
    from effdnn.compress.deep_compression import DeepCompressionConfig, encode_model
    path = tmp / "m.edc"
    encode_model(pm, DeepCompressionConfig(method="deep-compression", bits=4), path)
    return m, path


def _mutate(tmp: Path, edit: Callable[[bytearray], bytes]) -> tuple[torch.nn.Module, Path]:
    m, path = _container(tmp)
    data = edit(bytearray(path.read_bytes()))
    path.write_bytes(data)
    return m, path


def _recrc(b: bytearray) -> bytes:
    body = bytes(b[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def _load(edit: Callable[[bytearray], bytes]) -> Callable[[Path], Any]:
    def fn(tmp: Path) -> Any:
        from effdnn.compress.deep_compression import load_compressed
        m, path = _mutate(tmp, edit)
        return load_compressed(path, m)
    return fn


def _load_into_other(tmp: Path) -> Any:
    from effdnn.compress.deep_compression import load_compressed
    _, path = _container(tmp)
    return load_compressed(path, build_model("mlp", 1, 4, (8, 8), hidden=[16]))


CONTAINER_CASES = [
    a("container", "missing", "no.edc: cannot read", lambda t: __import__("effdnn.compress.deep_compression", fromlist=["x"]).load_compressed(t / "no.edc", _MLP)),
    a("container", "empty", "container", _load(lambda b: b"")),
    a("container", "bad-magic", "container", _load(lambda b: b"XXXX" + bytes(b[4:]))),
    a("container", "truncated", "checksum mismatch", _load(lambda b: bytes(b[: len(b) // 2]))),
    a("container", "bad-crc", "checksum", _load(lambda b: bytes(b[:-1]) + bytes([b[-1] ^ 1]))),
    a("container", "flipped-byte", "checksum mismatch", _load(lambda b: bytes(b[:20]) + bytes([b[20] ^ 0xFF]) + bytes(b[21:]))),
    a("container", "version", "version", _load(lambda b: _recrc(b[:4] + bytearray(struct.pack("<H", 9)) + b[6:]))),
    a("container", "section-count", "1000000 sections cannot fit", _load(lambda b: _recrc(b[:8] + bytearray(struct.pack("<I", 10**6)) + b[12:]))),
    a("container", "appended-bytes", "checksum mismatch", _load(lambda b: bytes(b) + b"extra")),
    a("container", "other-model", "section '1.weight': shape (8, 64) torch.float32, the model wants (16, 64)", _load_into_other),
]

ENERGY_CASES = [
    c("energy", name, needle, "run", "r.yaml", r__yaml=recipe(cost={"energy_table": "e.yaml"}), e__yaml=text)
    for name, text, needle in [
        ("value-string", "int_add: {8: abc}", "energy table e.yaml: int_add[8]: Input should be a valid number"),
        ("table-number", "int_add: 5", "int_add: Input should be a valid dictionary"),
        ("dram-string", "dram_read_64b: x", "dram_read_64b: Input should be a valid number"),
        ("dram-nan", "dram_read_64b: .nan", "dram_read_64b: Input should be a finite number"),
        ("value-inf", "float_mult: {16: .inf}", "float_mult[16]: Input should be a finite number"),
        ("negative", "int_mult: {8: -1}", "int_mult[8]: Input should be greater than or equal to 0"),
        ("width-zero", "float_add: {0: 1}", "Input should be greater than 0"),
        ("empty-table", "int_add: {}", "int_add: Dictionary should have at least 1 item"),
        ("unknown-key", "int_sub: {8: 1}", "int_sub: unknown key"),
        ("malformed", "int_add: [1\n", "unreadable"),
        ("a-list", "- 1\n- 2\n", "Input should be a valid dictionary"),
        ("source-number", "source: [1]", "source: Input should be a valid string"),
    ]
]


def _lenet() -> torch.nn.Module:
    return build_model("lenet5", 1, 10, (8, 8))


def _q(spec: dict | Any, calib: Any) -> Callable[[Path], Any]:
    return lambda t: effdnn.quantize(_lenet(), spec, calib)


CALIBRATION_CASES = [
    a("calibration", "empty", "calibration set is empty", _q({"method": "ptq"}, [])),
    a("calibration", "nan", "NaN or Inf", _q({"method": "ptq"}, [torch.full((2, 1, 8, 8), float("nan"))])),
    a("calibration", "inf", "NaN or Inf", _q({"method": "ptq"}, [torch.full((2, 1, 8, 8), float("inf"))])),
    a("calibration", "channels", "fails on calibration batch 1 (input (2, 3, 8, 8) float32)", _q({"method": "ptq"}, [torch.randn(2, 3, 8, 8)])),
    a("calibration", "rank", "fails on calibration batch 1 (input (2, 8, 8) float32)", _q({"method": "ptq"}, [torch.randn(2, 8, 8)])),
    a("calibration", "dtype", "fails on calibration batch 1 (input (2, 1, 8, 8) int64)", _q({"method": "ptq"}, [torch.ones(2, 1, 8, 8, dtype=torch.long)])),
    a("calibration", "second-batch", "fails on calibration batch 2", _q({"method": "ptq"}, [torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)])),
    a("calibration", "dict-keys", "calibration", _q({"method": "ptq"}, [{"pixels": torch.randn(2, 1, 8, 8)}])),
    a("calibration", "zero-example-batch", "calibration: batch 1 holds 0 examples", _q({"method": "ptq"}, [torch.randn(0, 1, 8, 8)])),
    a("calibration", "qat-empty", "calibration set is empty", _q({"method": "qat"}, [])),
    a("calibration", "lsq-nan", "NaN or Inf", _q({"method": "lsq"}, [torch.full((2, 1, 8, 8), float("nan"))])),
    a("calibration", "no-calib-data", "pass calib_data=", _q({"method": "ptq"}, None)),
    a("calibration", "strings", "calib_data must be an iterable of batches", _q({"method": "ptq"}, "images")),
    a("calibration", "number", "calib_data must be an iterable of batches", _q({"method": "ptq"}, 3)),
    a("calibration", "act-kmeans", "for weights only", _q({"method": "ptq", "act": {"format": "kmeans"}}, [torch.randn(2, 1, 8, 8)])),
    a("calibration", "prune-data-strings", "data must be an iterable of batches",
      lambda t: effdnn.prune(_lenet(), {"method": "taylor", "sparsity": 0.5}, "x")),
    a("calibration", "prune-no-data", "pass data=", lambda t: effdnn.prune(_lenet(), {"method": "taylor", "sparsity": 0.5})),
    a("calibration", "channel-no-data", "pass data=", lambda t: effdnn.prune(_lenet(), {"method": "channel", "saliency": "taylor", "sparsity": 0.5})),
]


def _no_linear() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten())


API_CASES = [
    a("api", "quantize-string-model", "effdnn.quantize: model must be a torch.nn.Module, got str", lambda t: effdnn.quantize("model", {"method": "ptq"})),
    a("api", "prune-none-model", "effdnn.prune: model must be a torch.nn.Module, got NoneType", lambda t: effdnn.prune(None, {"method": "magnitude"})),
    a("api", "cost-none-model", "effdnn.cost: model must be a torch.nn.Module", lambda t: effdnn.cost(None, torch.randn(1, 1, 8, 8))),
    a("api", "cost-none-input", "cost: example_input must be a batch tensor", lambda t: effdnn.cost(_lenet(), None)),
    a("api", "cost-zero-batch", "cost: example_input holds 0 examples", lambda t: effdnn.cost(_lenet(), torch.zeros(0, 1, 8, 8))),
    a("api", "cost-wrong-shape", "cost: the model's forward fails on example_input (2, 3, 8, 8)", lambda t: effdnn.cost(_lenet(), torch.zeros(2, 3, 8, 8))),
    a("api", "cost-scalar", "cost: example_input must be a batch tensor", lambda t: effdnn.cost(_lenet(), torch.tensor(1.0))),
    a("api", "run-int", "effdnn.run: recipe must be a YAML path, a dict or a Recipe, got int", lambda t: effdnn.run(42)),
    a("api", "run-missing-file", "file not found", lambda t: effdnn.run(t / "none.yaml")),
    a("api", "run-bad-dict", "nonsense: unknown key", lambda t: effdnn.run({"nonsense": 1})),
    a("api", "spec-string", "quantize: expected a mapping or a config object, got str", lambda t: effdnn.quantize(_lenet(), "ptq")),
    a("api", "spec-none", "quantize: expected a mapping or a config object, got NoneType", lambda t: effdnn.quantize(_lenet(), None)),
    a("api", "spec-unknown-method", "unknown quantize method 'int8'", lambda t: effdnn.quantize(_lenet(), {"method": "int8"})),
    a("api", "spec-missing-method", "quantize.method: missing", lambda t: effdnn.quantize(_lenet(), {"weight": {"bits": 8}})),
    a("api", "spec-unknown-key", "quantize.weights: unknown key", lambda t: effdnn.quantize(_lenet(), {"method": "ptq", "weights": {}})),
    a("api", "prune-spec-list", "prune: expected a mapping", lambda t: effdnn.prune(_lenet(), ["magnitude"])),
    a("api", "prune-sparsity", "prune.sparsity", lambda t: effdnn.prune(_lenet(), {"method": "magnitude", "sparsity": 2})),
    a("api", "prune-no-layers", "has no convolution or linear layer", lambda t: effdnn.prune(_no_linear(), {"method": "magnitude", "sparsity": 0.5})),
    a("api", "quantize-no-layers", "has no Conv1d / Conv2d / Linear layer", lambda t: effdnn.quantize(_no_linear(), {"method": "ptq"}, [torch.randn(2, 3)])),
    a("api", "binary-no-layers", "has no Conv2d / Linear layer", lambda t: effdnn.quantize(_no_linear(), {"method": "bwn"}, [torch.randn(2, 3)])),
    a("api", "keep-fp-typo", "ptq.keep_fp: pattern 'fc9' matches no layer", lambda t: effdnn.quantize(_lenet(), {"method": "ptq", "keep_fp": ["fc9"]}, [torch.randn(2, 1, 8, 8)])),
    a("api", "keep-8bit-typo", "ptq.keep_8bit: pattern 'x' matches no layer", lambda t: effdnn.quantize(_lenet(), {"method": "ptq", "keep_8bit": ["x"]}, [torch.randn(2, 1, 8, 8)])),
    a("api", "binary-keep-fp-typo", "bwn.keep_fp: pattern 'x' matches no layer", lambda t: effdnn.quantize(_lenet(), {"method": "bwn", "keep_fp": ["x"]}, [torch.randn(2, 1, 8, 8)])),
    a("api", "export-path-below-file", "is a file, not a folder", lambda t: (t.joinpath("f").write_text("x"), effdnn.export_onnx(_lenet(), torch.randn(1, 1, 8, 8), t / "f" / "m.onnx"))),
    a("api", "export-path-folder", "is a folder, not a file", lambda t: effdnn.export_onnx(_lenet(), torch.randn(1, 1, 8, 8), t)),
    a("api", "export-model-string", "export_onnx: model must be a torch.nn.Module", lambda t: effdnn.export_onnx("m", torch.randn(1), t / "m.onnx")),
    a("api", "export-wrong-input", "export_onnx", lambda t: effdnn.export_onnx(_lenet(), torch.randn(1, 3, 8, 8), t / "m.onnx")),
    a("api", "experiment-bad-key", "prune.sparsty: unknown key", lambda t: effdnn.Experiment(_lenet(), {"prune": {"method": "magnitude", "sparsty": 0.5}})),
    a("api", "experiment-not-dict", "experiment: expected a mapping of blocks, got list", lambda t: effdnn.Experiment(_lenet(), ["prune"])),
    a("api", "experiment-refused-pair", "experiment: quantize ptq + precision: PTQ calibrates a trained model",
      lambda t: effdnn.Experiment(_lenet(), {"quantize": {"method": "ptq"}, "precision": {"train": "fp16"}})),
    a("api", "pact-one-shot", "use effdnn.Experiment", lambda t: effdnn.quantize(_lenet(), {"method": "pact"}, [torch.randn(2, 1, 8, 8)])),
    a("api", "agp-one-shot", "prune", lambda t: effdnn.prune(_lenet(), {"method": "magnitude", "sparsity": 0.5, "schedule": "agp"})),
    a("api", "energy-table-value", "energy table", lambda t: effdnn.EnergyTable(int_add={8: -1.0})),
    a("api", "energy-table-nan", "energy table", lambda t: effdnn.EnergyTable(dram_read_64b=float("nan"))),
]

CASES = [*RECIPE_CASES, *DATA_CASES, *MODEL_CASES, *PATH_CASES, *CHECKPOINT_CASES, *CONTAINER_CASES, *ENERGY_CASES,
         *CALIBRATION_CASES, *API_CASES]


def test_the_table_is_large_and_covers_every_kind() -> None:
    kinds = {case.kind for case in CASES}
    assert kinds == {"recipe", "data", "model", "paths", "checkpoint", "container", "energy", "calibration", "api"}
    assert len(CASES) >= 150, len(CASES)
    assert len({(case.kind, case.id) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{case.kind}-{case.id}" for case in CASES])
def test_bad_input_is_one_line(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.api is not None:
        with pytest.raises(EffdnnError) as err:
            case.api(tmp_path)
        message = str(err.value)
        assert "\n" not in message, message
        assert case.needle in message, message
        return
    with pytest.raises(SystemExit) as exit_:
        cli.main(case.cli)
    out = capsys.readouterr()
    # progress lines (a baseline trained before an experiment fails) may precede the one error line
    lines = [line for line in out.err.splitlines() if line.startswith("effdnn:")]
    assert exit_.value.code == case.code, out.err
    assert len(lines) == 1 and lines[0].startswith("effdnn: error: ") and out.err.rstrip().endswith(lines[0]), out.err
    assert case.needle in lines[0], lines[0]
    assert "Traceback" not in out.err
    assert not (tmp_path / "o" / "report.json").exists()

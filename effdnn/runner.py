"""recipe -> baseline -> experiments -> report.json / report.md / plots."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .context import ExperimentContext
from .cost import EnergyTable, cost, fp32_bytes
from .data import DataBundle, load_data
from .data.text import resolve_tokenizer
from .errors import EffdnnError
from .export import OnnxModel, export_onnx
from .models import build_model
from .recipe import BLOCKS, ExperimentSpec, Recipe
from .registry import REGISTRIES
from .report import render_report
from .utils import distributed as ddp
from .utils.batches import forward, move
from .utils.paths import check_output_dir
from .utils.user_code import resolve_user_file
from .train import evaluate, fit, load_weights, save_atomic
from .train.embed import cosine_stats, embeddings

REPORT_FILES = ("report.json", "report.md", "accuracy_vs_size.png", "accuracy_vs_energy.png")


def _say(msg: str) -> None:
    if ddp.is_main():
        print(msg, file=sys.stderr, flush=True)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def _saved_row(path: Path, key: str) -> dict[str, Any] | None:
    """A finished experiment's row from an earlier run, if ``path`` holds one made for ``key``; a file
    that cannot be read is reported and the experiment runs again."""
    try:
        saved = json.loads(path.read_text())
        row = saved["row"] if saved.get("key") == key else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        _say(f"{path}: unreadable; running the experiment again")
        return None
    return row if isinstance(row, dict) else None


def baseline_cache() -> Path:
    """Trained baselines shared between recipes with identical data / model / baseline / seed blocks."""
    return Path(os.environ.get("EFFDNN_CACHE", Path.home() / ".cache" / "effdnn")) / "baselines"


def _cached(folder: Path, key: str) -> bool:
    meta = folder / "meta.json"
    try:
        return (folder / "model.pt").is_file() and json.loads(meta.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise EffdnnError(f"device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EffdnnError(f"device: {name} asked for but no CUDA device is available")
    return dev


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "effdnn": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "processor": platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "world_size": ddp.world_size(),
    }


class Runner:
    def __init__(self, recipe: Recipe, out: str | Path | None = None, resume: bool = False) -> None:
        self.recipe = recipe
        self.out = Path(out or recipe.output or f"runs/{recipe.name}")  # relative to the working folder
        self.resume = resume
        self.device = resolve_device(recipe.device)
        ddp.init_from_env(self.device)
        self.table = EnergyTable.from_file(self._path(recipe.cost.energy_table)) if recipe.cost.energy_table else None

    def _path(self, p: str) -> Path:
        """A file the recipe names: relative paths from the recipe's folder first, then the working folder."""
        return resolve_user_file(p, self.recipe.base_dir) or Path(p)

    def make_model(self) -> nn.Module:
        r = self.recipe
        torch.manual_seed(r.seed)
        model = build_model(r.model.name, self.data.in_channels, self.data.num_classes, self.data.input_size,
                            base_dir=r.base_dir, **r.model.kwargs)
        return model.to(self.device)

    def score(self, model: nn.Module) -> dict[str, Any]:
        """The metric on the test split: top-1 accuracy with labels; for unlabelled text, the cosine of the
        sentence embeddings against the baseline's (``accuracy`` then holds the mean cosine)."""
        if not (self.data.text and self.data.num_classes == 0):
            return {"accuracy": evaluate(model, self.data.test, batch_size=512)}
        emb = embeddings(model, self.data.test, batch_size=self.recipe.data.batch_size)
        if self.reference is None:
            self.reference = emb
        stats = cosine_stats(emb, self.reference)
        return {"accuracy": stats["cosine_mean"], "metric": "cosine", **stats}

    def measure(self, model: nn.Module, name: str, wall: float, extra: dict[str, Any],
                scored: nn.Module | None = None, size: int | None = None) -> dict[str, Any]:
        """The row of ``model``; ``scored`` / ``size``: what the metric and the size are taken from instead
        (an experiment's exported file)."""
        r = self.recipe
        scores = self.score(scored if scored is not None else model)
        acc = scores["accuracy"]
        example = self.ctx().example_input(r.cost.example_batch)
        c = cost(model, example, table=self.table, skip_zeros=r.cost.skip_zeros)
        fp32 = self.fp32_size or c.fp32_size_bytes
        size = size or c.size_bytes
        row = {
            "name": name, **scores,
            "accuracy_delta": acc - self.baseline_accuracy if self.baseline_accuracy is not None else 0.0,
            "size_bytes": size, "compression_ratio": fp32 / size if size else float("inf"),
            "params": c.params, "macs": c.macs, "effective_macs": c.effective_macs, "bitops": c.bitops,
            "energy_pj": c.energy_pj, "compute_energy_pj": c.compute_energy_pj, "memory_energy_pj": c.memory_energy_pj,
            "weight_sparsity": c.weight_sparsity, "activation_sparsity": c.activation_sparsity,
            "wall_time_s": wall, **extra,
            "layers": [l.__dict__ for l in c.layers],
        }
        return row

    def ctx(self, exp: ExperimentSpec | None = None, out_dir: Path | None = None,
            teacher: nn.Module | None = None) -> ExperimentContext:
        return ExperimentContext(
            data=self.data, device=self.device, seed=self.recipe.seed, batch_size=self.recipe.data.batch_size,
            calib_batches=exp.calib_batches if exp else 16, out_dir=out_dir, baseline_spec=self.recipe.baseline,
            make_model=self.make_model, resume=self.resume, teacher=teacher,
            finetune=exp.finetune if exp is not None and exp.finetune is not None and exp.finetune.epochs > 0 else None,
        )

    # -- baseline ---------------------------------------------------------------------------------
    def check_forward(self, model: nn.Module) -> None:
        """One forward pass on two test examples before any training: a model that does not fit
        the data (a user's model, a wrong input size) is one line naming the input, not a traceback."""
        x = move(self.ctx().example_input(2), self.device)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = forward(model, x)
        except (Exception, SystemExit) as e:
            what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {' '.join(str(e).split())}"
            shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape)
            raise EffdnnError(f"model: its forward fails on the data (input {shape}): {what}") from None
        finally:
            model.train(was)
        if self.data.num_classes == 0:  # unlabelled text: any output; the metric reads its hidden states
            return
        logits = out.logits if hasattr(out, "logits") else out
        want = (2 if isinstance(x, dict) else x.shape[0], self.data.num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise EffdnnError(f"model: its output on the data is {got}, expected logits of shape {want}")

    def baseline(self) -> tuple[nn.Module, dict[str, Any]]:
        r = self.recipe
        model = self.make_model()
        self.check_forward(model)
        spec = r.baseline
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if spec.checkpoint:
            load_weights(model, self._path(spec.checkpoint))
            extra["checkpoint"] = spec.checkpoint
        elif spec.epochs == 0:  # the model as built (a pretrained one): nothing to train or cache
            extra["epochs"] = 0
        elif self.data.num_classes == 0:
            raise EffdnnError("baseline: the data has no labels, so the baseline cannot be trained: use "
                              "baseline: {epochs: 0} (the model as built, e.g. pretrained) or a checkpoint")
        else:
            key = _hash(r.data.model_dump(), r.model.model_dump(), spec.model_dump(exclude={"checkpoint"}), r.seed,
                        ddp.world_size())
            bdir = self.out / "baseline"
            found = next((d for d in (bdir, baseline_cache() / key) if _cached(d, key)), None)
            if found is not None:
                load_weights(model, found / "model.pt")
                extra.update(json.loads((found / "meta.json").read_text()).get("train", {}))
                _say(f"baseline: reusing {found / 'model.pt'}")
            else:
                res = fit(model, self.data.train, spec, batch_size=r.data.batch_size, seed=r.seed,
                          checkpoint_dir=bdir / "ckpt", resume=self.resume, desc="baseline")
                extra = {"epochs": spec.epochs, "epoch_time_s": res.epoch_time_s,
                         "final_train_loss": res.history[-1]["loss"] if res.history else None}
                if spec.swa is not None:
                    extra["swa_models"] = res.swa_models
            if ddp.is_main():
                for d in {bdir, baseline_cache() / key} - {found}:
                    save_atomic(model.state_dict(), d / "model.pt")
                    _write_json({"key": key, "train": extra}, d / "meta.json")
            ddp.barrier()
        self.fp32_size = fp32_bytes(model)
        self.baseline_accuracy = None
        self.reference = None  # unlabelled text: the baseline's embeddings, what every row is compared with
        row = self.measure(model, "baseline", time.perf_counter() - t0, extra)
        self.baseline_accuracy = row["accuracy"]
        _say(f"baseline: {row.get('metric', 'accuracy')} {row['accuracy']:.4f}  size {row['size_bytes'] / 1024:.1f} KiB")
        return model, row

    def load_baseline(self) -> tuple[nn.Module, dict[str, Any]]:
        """Load the data, then train the baseline or reuse the cached one: where ``run`` and the
        ``effdnn sensitivity`` sweep start."""
        r = self.recipe
        tokenizer = resolve_tokenizer(r.data.tokenizer, r.model.name, r.base_dir)
        self.data: DataBundle = load_data(r.data.name, root=r.data.root, base_dir=r.base_dir, tokenizer=tokenizer,
                                          max_length=r.data.max_length, **r.data.kwargs)
        self.fp32_size = None
        self.baseline_accuracy = None
        return self.baseline()

    # -- experiments ------------------------------------------------------------------------------
    def experiment(self, i: int, exp: ExperimentSpec, base: nn.Module) -> dict[str, Any]:
        edir = self.out / "experiments" / exp.name
        result_path = edir / "result.json"
        key = _hash(exp.model_dump(), self.base_key)
        saved = _saved_row(result_path, key) if self.resume and result_path.is_file() else None
        if saved is not None:
            _say(f"{exp.name}: done in an earlier run, reusing {result_path}")
            return saved
        key_path = edir / "experiment.key"  # what the folder's checkpoints were made for
        if ddp.is_main():
            if edir.is_dir() and (not key_path.is_file() or key_path.read_text() != key):
                if self.resume:
                    _say(f"{exp.name}: its definition (or the baseline) changed since {edir} was written; starting it over")
                shutil.rmtree(edir)
            edir.mkdir(parents=True, exist_ok=True)
            key_path.write_text(key)
        ddp.barrier()
        t0 = time.perf_counter()
        torch.manual_seed(self.recipe.seed)
        ctx = self.ctx(exp, edir, teacher=base)
        model = copy.deepcopy(base)
        used: dict[str, Any] = {}

        def apply(block: str, model: nn.Module) -> nn.Module:
            spec = getattr(exp, block)
            if spec is None:
                return model
            reg = REGISTRIES[block]
            config = reg.parse(spec, f"experiments[{i}].{block}")
            used[block] = config.model_dump(mode="json")
            return reg.method_of(config).transform(model, config, ctx)

        for block in BLOCKS[:-1]:
            model = apply(block, model)
        if exp.finetune is not None and exp.finetune.epochs > 0:
            ctx.fit(model, exp.finetune, desc=exp.name)
        for fin in ctx.finalizers:
            model = fin(model)
        before: dict[str, Any] = {}
        if exp.compress is not None:  # what the encoding itself costs: the same weights, before the file
            before["accuracy_before_compress"] = self.score(model)["accuracy"]
        model = apply("compress", model)  # last: it encodes the final (fine-tuned, converted) weights
        extra: dict[str, Any] = {"techniques": used, **before, **ctx.extra}
        for cb in ctx.callbacks:
            extra.update(cb.report())
        if ctx.train_result is not None:
            extra["epoch_time_s"] = ctx.train_result.epoch_time_s
        file: dict[str, Any] = {}
        if exp.export is not None:  # the row is the file's: scored in onnxruntime, its size on disk
            path = export_onnx(model, self.ctx().example_input(self.recipe.data.batch_size), edir / "model.onnx",
                               embeddings=exp.export.embeddings, dynamic_activations=exp.export.dynamic_activations)
            file = {"scored": OnnxModel(path, torch.get_num_threads()), "size": path.stat().st_size}
            extra.update({"onnx_file": str(path), "onnx_bytes": file["size"]})
        row = self.measure(model, exp.name, time.perf_counter() - t0, extra, **file)
        if ddp.is_main():
            edir.mkdir(parents=True, exist_ok=True)
            _write_json({"key": key, "row": row}, result_path)
        _say(f"{exp.name}: {row.get('metric', 'accuracy')} {row['accuracy']:.4f} ({row['accuracy_delta'] * 100:+.2f} pts)  "
             f"size {row['size_bytes'] / 1024:.1f} KiB  ({row['compression_ratio']:.1f}x)")
        return row

    def run(self) -> dict[str, Any]:
        r = self.recipe
        if ddp.is_main():
            check_output_dir(self.out, "--out")  # before any work: a bad folder fails now, not after training
            for f in REPORT_FILES:  # a stale report must not pass for this run's
                (self.out / f).unlink(missing_ok=True)
        t0 = time.perf_counter()
        base, base_row = self.load_baseline()
        self.base_key = _hash(base_row["accuracy"], r.data.model_dump(), r.model.model_dump(), r.baseline.model_dump(), r.seed)
        rows = [self.experiment(i, e, base) for i, e in enumerate(r.experiments)]
        report = {
            "name": r.name, "metric": base_row.get("metric", "accuracy"), "recipe": r.model_dump(mode="json", exclude={"base_dir"}),
            "baseline": base_row, "experiments": rows,
            "environment": environment(self.device), "total_time_s": time.perf_counter() - t0,
        }
        if ddp.is_main():
            render_report(report, self.out)
            _write_json(report, self.out / "report.json")  # last: its presence means the run completed
        ddp.barrier()
        return report


def run(recipe: Recipe | dict | str | Path, out: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run a recipe (object, dict or YAML path) and return the report (also written to ``out``)."""
    from .recipe import load_recipe, parse_recipe

    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = parse_recipe(recipe)
    elif not isinstance(recipe, Recipe):
        raise EffdnnError(f"effdnn.run: recipe must be a YAML path, a dict or a Recipe, got {type(recipe).__name__}")
    return Runner(recipe, out, resume).run()

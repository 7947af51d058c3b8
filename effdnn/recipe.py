"""The recipe: a YAML file (or dict) validated with pydantic; every error names its key path."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .composition import check_composition
from .errors import EffdnnError
from .registry import REGISTRIES, StrictModel, format_validation_error
from .train_spec import TrainSpec

# The order blocks apply in; ``finetune`` runs after all but ``compress``, which encodes the final weights.
BLOCKS = ("prune", "activation_sparsity", "quantize", "precision", "compress")


class DataSpec(StrictModel):
    name: str = "digits"
    root: str | None = None
    batch_size: int = Field(128, ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str | None = Field(None, description="text: 'file.py:fn' or a tokenizer folder (default: the model file's tokenizer())")
    max_length: int | None = Field(None, ge=1, description="text: sentences are truncated to this many tokens")

    omit_if_none = ("tokenizer", "max_length")


class ModelSpec(StrictModel):
    name: str = "lenet5"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class CostSpec(StrictModel):
    energy_table: str | None = None  # a YAML / JSON file replacing the Horowitz table
    skip_zeros: bool = True
    example_batch: int = Field(64, ge=1, description="test images the cost model traces")


class ExportSpec(StrictModel):
    """The experiment's final model written as ONNX and scored in onnxruntime: the row's metric and size
    are the file's (``effdnn.export_onnx``: int8 initializers for quantized weights)."""

    format: Literal["onnx"] = "onnx"
    embeddings: Literal["float", "int8"] = Field("float", description="int8: embedding tables as int8 rows")
    dynamic_activations: Literal["integer", "ort", "float"] = Field(
        "integer", description="layers with dynamic (per-token) activations: integer ops (MatMulInteger), "
        "onnxruntime's MatMulIntegerToFloat (ort), or the fake quantization as float ops")


class ExperimentSpec(StrictModel):
    name: str
    quantize: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    activation_sparsity: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None
    compress: dict[str, Any] | None = None
    finetune: TrainSpec | None = None
    calib_batches: int = Field(16, ge=1, description="training batches used for calibration")
    export: ExportSpec | None = None

    omit_if_none = ("export",)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\") or v in (".", "..", "baseline"):
            raise ValueError("must be a non-empty name without slashes, and not 'baseline'")
        return v


class Recipe(StrictModel):
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    baseline: TrainSpec = Field(default_factory=TrainSpec)
    experiments: list[ExperimentSpec] = Field(default_factory=list)
    cost: CostSpec = Field(default_factory=CostSpec)
    output: str | None = None
    base_dir: str | None = Field(None, description="folder that relative paths are taken from (set by load_recipe)")

    @model_validator(mode="after")
    def _unique_names(self) -> "Recipe":
        seen: set[str] = set()
        for e in self.experiments:
            if e.name in seen:
                raise ValueError(f"experiment name {e.name!r} used twice")
            seen.add(e.name)
        return self


def parse_recipe(data: Any, base_dir: str | Path | None = None) -> Recipe:
    """A dict (parsed YAML) -> validated Recipe, technique blocks included; one-line errors."""
    if not isinstance(data, dict):
        raise EffdnnError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    if base_dir is not None and "base_dir" not in data:
        data = {**data, "base_dir": str(base_dir)}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise EffdnnError("recipe: " + format_validation_error(err)) from None
    for i, exp in enumerate(recipe.experiments):
        parsed: dict[str, Any] = {"finetune": exp.finetune}
        for block in BLOCKS:
            spec = getattr(exp, block)
            if spec is not None:
                parsed[block] = REGISTRIES[block].parse(spec, f"experiments[{i}].{block}")
        check_composition(parsed, f"experiments[{i}] ({exp.name})")  # refused pairs fail before any training
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise EffdnnError(f"recipe {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EffdnnError(f"recipe {path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EffdnnError(f"recipe {path}: unreadable ({e})") from None
    if data is None:
        raise EffdnnError(f"recipe {path}: empty file")
    try:
        return parse_recipe(data, base_dir=path.parent)
    except EffdnnError as e:
        raise EffdnnError(f"{path}: {e}") from None

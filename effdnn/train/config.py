"""Training settings: the ``baseline`` and ``finetune`` blocks of a recipe."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ..registry import StrictModel


class DistillSpec(StrictModel):
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural
    network"): loss = (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)), the
    teacher being the experiment's own baseline model (before its transforms)."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0)


class TrainSpec(StrictModel):
    """How to train. ``checkpoint`` (baseline only) loads weights instead of training."""

    epochs: int = Field(10, ge=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = Field(1, ge=1, description="epochs between decays of the step schedule")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor of the step schedule")
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    max_batches: int | None = Field(None, ge=1, description="cap on batches per epoch (quick runs)")
    batch_size: int | None = Field(None, ge=1, description="overrides data.batch_size")
    checkpoint: str | None = None
    distill: DistillSpec | None = Field(None, description="finetune only: learn from the baseline model's soft outputs")

    @model_serializer(mode="wrap")
    def _omit_unset_distill(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without distillation the dump is what it was before the field existed: the cache keys of
        trained baselines and finished experiments are hashes of these dumps."""
        data = handler(self)
        if isinstance(data, dict) and data.get("distill") is None:
            data.pop("distill", None)
        return data

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> "TrainSpec":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer sgd only")
        return self

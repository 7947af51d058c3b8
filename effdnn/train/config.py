"""Training settings: the ``baseline`` and ``finetune`` blocks of a recipe."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..registry import StrictModel


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

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> "TrainSpec":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer sgd only")
        return self

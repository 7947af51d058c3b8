"""Training settings: the ``baseline`` and ``finetune`` blocks of a recipe."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from .registry import StrictModel


class DistillSpec(StrictModel):
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural
    network"): loss = (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)), the
    teacher being the experiment's own baseline model (before its transforms).

    ``feature``: feature distillation, which needs no labels (FitNets, Romero et al. 2015, hint loss on
    hidden states): ``cosine`` = 1 - cos(e_s, e_t) of the embeddings (a Hugging Face output's last hidden
    state mean-pooled over the attention mask, else the output flattened), ``mse`` = mean (h_s - h_t)^2
    over the hidden states (or outputs). Batches without labels train on it alone; with labels the loss
    is (1 - alpha) CE + alpha * feature term."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0)
    feature: Literal["cosine", "mse"] | None = Field(None, description="label-free feature distillation")

    omit_if_none = ("feature",)


class SWASpec(StrictModel):
    """Stochastic Weight Averaging (Izmailov et al. 2018, "Averaging weights leads to wider optima and
    better generalization", Algorithm 1): the last ``epochs`` epochs of the run keep the learning rate
    constant at ``lr``; every ``every`` steps the running average w_swa <- (n w_swa + w) / (n + 1) takes
    the weights in; at the end the model takes w_swa and its BatchNorm statistics are recomputed on
    ``bn_batches`` training batches (all of them when unset), since the averaged weights never ran."""

    epochs: int = Field(ge=1, description="the averaging phase: the run's last epochs")
    lr: float = Field(gt=0, description="the constant learning rate of the averaging phase")
    every: int = Field(1, ge=1, description="optimizer steps between two averaged models")
    bn_batches: int | None = Field(None, ge=1, description="training batches that re-estimate BatchNorm")


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
    swa: SWASpec | None = Field(None, description="average the weights of the run's last epochs (SWA)")

    omit_if_none = ("distill", "swa")

    @property
    def schedule_epochs(self) -> int:
        """Epochs the learning-rate schedule spans: all of them, less an averaging phase."""
        return self.epochs - (self.swa.epochs if self.swa else 0)

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> "TrainSpec":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer sgd only")
        if self.swa is not None and self.swa.epochs > self.epochs:
            raise ValueError(f"swa.epochs ({self.swa.epochs}) must not exceed epochs ({self.epochs})")
        return self

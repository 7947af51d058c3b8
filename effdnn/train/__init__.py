"""Training engine: fit / evaluate, checkpoints and resume, callbacks, DDP under torchrun."""
from ..hooks import Callback
from .checkpoint import load_checkpoint, load_weights, save_atomic
from ..train_spec import TrainSpec
from .loop import TrainResult, evaluate, fit, predictions

__all__ = ["Callback", "TrainResult", "TrainSpec", "evaluate", "fit", "load_checkpoint", "load_weights",
           "predictions", "save_atomic"]

"""ONNX export with a dynamic batch axis, checked by loading it back in onnxruntime."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import batch_input
from ..utils.paths import check_output_file

OPSET = 17


def export_onnx(model: nn.Module, example_input: Any, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` as ONNX to ``path`` (input ``input``, output ``output``, batch axis dynamic).

    Modules that know how to export themselves (fake-quantizers become QuantizeLinear /
    DequantizeLinear pairs) do so through their own ``symbolic`` functions.
    """
    if not isinstance(model, nn.Module):
        raise EffdnnError(f"export_onnx: model must be a torch.nn.Module, got {type(model).__name__}")
    path = check_output_file(path, "export_onnx: path")
    x = batch_input(example_input) if isinstance(example_input, (tuple, list)) else example_input
    was_training = model.training
    model.eval()
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        tmp.replace(path)
    except Exception as e:
        raise EffdnnError(f"export_onnx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def run_onnx(path: str | Path, x: torch.Tensor | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an exported model in onnxruntime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    return sess.run(None, {sess.get_inputs()[0].name: arr.astype(np.float32)})[0]

"""ONNX export with dynamic batch (and sequence) axes, checked by loading it back in onnxruntime.

Inputs: a tensor, a tuple of positional tensors, or a dict of keyword tensors (Hugging Face models);
every input's batch axis is dynamic, and the sequence axis of token-like inputs (``inputs.py``).
Quantized models: fake-quantizers export as QuantizeLinear / DequantizeLinear through their own
``symbolic`` forward; the weights' QuantizeLinear nodes are then evaluated once and stored as int8
initializers (``int8_graph.py``) and each layer's output is quantized where the layer ends
(``qdq_placement.py``), so the file holds int8 weights and onnxruntime fuses the integer kernels.
Adaptive average pooling exports at any input size (``adaptive_pool.py``).
``embeddings="int8"`` also stores embedding tables as int8 rows with per-row scales.
Linears with dynamic (per-token / per-tensor) activation quantizers are written, by default
(``dynamic_activations="integer"``), as integer ops: per-row scale from ReduceMax / ReduceMin,
QuantizeLinear to uint8, MatMulInteger on the int8 weight codes, Cast, Mul by row scale x per-channel
weight scale (``quant/onnx_linear.py``); ``"float"`` writes the fake quantization as float ops.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import EffdnnError
from ..quant.onnx_linear import integer_dynamic_linears, saturating_dynamic_linears
from ..utils.paths import check_output_file
from .adaptive_pool import register_adaptive_pool
from .inputs import ExportWrapper, export_inputs, output_names
from .int8_graph import fold_weight_quantizers, quantize_embedding_tables, unshare_activation_quantizers
from .qdq_placement import quantize_layer_outputs, sort_nodes

OPSET = 17


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _rewrite(path: Path, int8_weights: bool, embeddings: str) -> None:
    """The graph passes on the written file: integer weight initializers, int8 embedding tables."""
    import onnx

    if not int8_weights and embeddings != "int8":
        return
    model = onnx.load(str(path))
    changed = fold_weight_quantizers(model) + unshare_activation_quantizers(model) + quantize_layer_outputs(model) \
        if int8_weights else 0
    changed += quantize_embedding_tables(model) if embeddings == "int8" else 0
    if changed:
        sort_nodes(model)
        onnx.save(model, str(path))


def export_onnx(model: nn.Module, example_input: Any, path: str | Path, opset: int = OPSET, int8_weights: bool = True,
                embeddings: Literal["float", "int8"] = "float",
                dynamic_activations: Literal["integer", "ort", "float"] = "integer") -> Path:
    """Write ``model`` as ONNX to ``path``; returns the path.

    ``example_input``: a tensor (graph input ``input``, output ``output``), a tuple of positional tensors,
    or a dict of keyword tensors (inputs named by the keys, outputs by the output's keys); batch and
    sequence axes are dynamic. ``int8_weights``: fake-quantized weights stored as integer initializers
    + DequantizeLinear (else float + QuantizeLinear + DequantizeLinear). ``embeddings="int8"``: Gather
    tables as int8 rows with per-row scales. ``dynamic_activations``: layers whose activations are
    quantized at run time (``act: {dynamic: per_token}``) as ``"integer"`` ops (uint8 codes x int8
    weights in MatMulInteger, the file stores int8 weights; exact on x86 without VNNI only when
    2 (2^b_a - 1) max|c_w| <= 32767, e.g. W7A8 or W8A7: a warning names the layers otherwise) or
    ``"float"`` ops (the fake quantization as PyTorch computes it).
    """
    if not isinstance(model, nn.Module):
        raise EffdnnError(f"export_onnx: model must be a torch.nn.Module, got {type(model).__name__}")
    if embeddings not in ("float", "int8"):
        raise EffdnnError(f"export_onnx: embeddings must be 'float' or 'int8', got {embeddings!r}")
    if dynamic_activations not in ("integer", "ort", "float"):
        raise EffdnnError(f"export_onnx: dynamic_activations must be 'integer', 'ort' or 'float', got {dynamic_activations!r}")
    integer = dynamic_activations != "float"
    if integer and (late := saturating_dynamic_linears(model)):
        warnings.warn(f"export_onnx: {len(late)} layers ({late[0]}, ...) can saturate int16 pair sums on x86 CPUs "
                      "without VNNI (8-bit weights x 8-bit activations); 7-bit weights or activations stay exact")
    path = check_output_file(path, "export_onnx: path")
    inputs = export_inputs(model, example_input)
    was_training = model.training
    model.eval()
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        try:
            outputs = output_names(model, inputs)
        except EffdnnError:
            raise
        except Exception as e:
            raise EffdnnError(f"export_onnx: the model's forward fails on example_input: {type(e).__name__}: {_first_line(e)}") from None
        register_adaptive_pool(opset)
        with warnings.catch_warnings(), integer_dynamic_linears(integer, "ort" if dynamic_activations == "ort" else "onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(ExportWrapper(model, inputs), inputs.args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=inputs.names, output_names=outputs,
                              dynamic_axes={**inputs.dynamic_axes, **{o: {0: "batch"} for o in outputs}})
        _rewrite(tmp, int8_weights, embeddings)
        tmp.replace(path)
    except EffdnnError:
        raise
    except Exception as e:
        raise EffdnnError(f"export_onnx: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def _feed(sess: Any, x: Any) -> dict[str, np.ndarray]:
    """onnxruntime's input dict for a tensor / array, a tuple of them or a dict (by name)."""
    names = [i.name for i in sess.get_inputs()]
    types = {i.name: i.type for i in sess.get_inputs()}

    def arr(name: str, v: Any) -> np.ndarray:
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        return a.astype(np.int64) if types[name] == "tensor(int64)" else a.astype(np.float32) if types[name] == "tensor(float)" else a

    if isinstance(x, dict):
        return {k: arr(k, v) for k, v in x.items() if k in types}
    items = list(x) if isinstance(x, (tuple, list)) else [x]
    return {n: arr(n, v) for n, v in zip(names, items)}


def onnx_session(path: str | Path, threads: int | None = None, optimize: bool = True) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads; ``optimize=False``: the graph as written)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path | Any, x: Any, threads: int | None = None, all_outputs: bool = False) -> Any:
    """Run an exported model in onnxruntime on the CPU: its first output (all of them with ``all_outputs``).

    ``path`` may be a session (``onnx_session``); ``x`` a tensor / array, a tuple or a dict of them."""
    sess = path if hasattr(path, "get_inputs") else onnx_session(path, threads)
    out = sess.run(None, _feed(sess, x))
    return out if all_outputs else out[0]


class OnnxModel(nn.Module):
    """An exported file as a module: ``forward`` runs it in onnxruntime and returns its first output as a
    tensor, so the code that scores a torch model scores the file the same way (``effdnn run``'s
    ``export`` rows). Inference only."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        return torch.from_numpy(np.asarray(run_onnx(self.session, x)))

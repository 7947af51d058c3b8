"""Deep Compression storage (Han, Mao & Dally 2016): pruning -> k-means weight sharing -> relative
sparse indices -> Huffman coding, written to the container file (container.py).

    compress: {method: deep-compression, bits: 5, conv_bits: 8, index_bits: 5, conv_index_bits: 8, huffman: true}

Runs last in an experiment (after fine-tuning and finalizers). For every convolution / linear weight:
its non-zeros (the pruning is done by the ``prune`` block before) are clustered into 2^bits shared
values with the k-means format (``effdnn.formats.kmeans``, linear initialisation, the paper's best;
a weight that already has no more distinct non-zero values, e.g. after k-means QAT, keeps them exactly);
positions are stored as relative indices of ``index_bits`` with filler zeros (``auto``: each layer's
width chosen for the smallest section); symbols and gaps are
Huffman coded. Every other tensor is stored raw. The file is then read back into a copy of the model,
which replaces it, so the accuracy measured is the accuracy of the file.

After quantization (composition): the file's shared values replace the weight format. Each quantized
layer's weight becomes its quantized (and masked) value first and the weight quantizer is dropped; input
quantizers stay. A layer with at most 2^bits distinct quantized levels (a per-tensor int / binary /
ternary / k-means layer, or few channels) keeps exactly those levels as its codebook; one with more
(per-channel scales over many channels) is re-clustered by k-means into 2^bits values.

``retrain: {epochs: 1, lr: 1e-4}`` (any finetune block, ``distill`` included) trains the shared values
before the file is written, as the paper does after quantization (section 3.3): each selected weight
becomes ``w = scatter(C[codes], positions)`` over a fixed zero background (:class:`SharedValues`, a
``torch.nn.utils.parametrize`` parametrization), so the gather's backward gives each centroid C_k
the summed gradient of its cluster, pruned weights stay zero, and the codes never change; biases and
the other float parameters train with it. The report's container gets ``accuracy_shared`` (right
after k-means, before retraining).

Storage reported to the cost model: each encoded layer states ``storage_bits`` = its section of the
file plus its raw bias; the container's own overhead (file header, META section, section headers of
the raw tensors, checksum, BatchNorm step counters) is charged to the first encoded layer, so the
report's ``size_bytes`` is the file size, byte for byte.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BeforeValidator, Field
from torch import nn
from torch.nn.utils import parametrize

from ..cost.precision import LayerPrecision, deployed_bits
from ..errors import EffdnnError
from ..formats.kmeans import KMeansFormat
from ..prune.select import select_layers
from ..prune.sparse import strip_sparse
from ..quant.fake_quant import compute_precision
from ..quant.fold_bn import fold_batchnorm
from ..registry import COMPRESS, StrictModel
from ..train_spec import TrainSpec
from ..transform import TransformContext
from .container import Shared, load_into, read_container, shared_payload, write_container

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CLASSES: dict[type, type] = {}


def _index_bits(v: Any) -> Any:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16):
        return v
    raise ValueError(f"must be an integer from 1 to 16 or 'auto', got {v!r}")


IndexBits = Annotated[int | Literal["auto"], BeforeValidator(_index_bits)]


class DeepCompressionConfig(StrictModel):
    method: Literal["deep-compression"] = "deep-compression"
    bits: int = Field(5, ge=1, le=10, description="shared-value bits of linear layers (paper: 5 for fc)")
    conv_bits: int | None = Field(None, ge=1, le=10, description="of convolutions (paper: 8); default: bits")
    index_bits: IndexBits = Field(5, description="relative-index bits of linear layers (paper: 5); auto: per "
                                  "layer, the width whose file section is smallest")
    conv_index_bits: IndexBits | None = Field(None, description="of convolutions (paper: 8); default: index_bits")
    huffman: bool = True
    fold_bn: bool = Field(False, description="fold BatchNorm into the conv / linear before it (the deployed form): "
                          "the file stores the folded weights and a bias instead of four BatchNorm vectors")
    init: Literal["linear", "density", "random", "kmeans++"] = "linear"
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    path: str | None = Field(None, description="where to write the file (default: the experiment folder / model.edc)")
    retrain: TrainSpec | None = Field(None, description="retrain the shared values before writing (the paper's "
                                      "section 3.3): codes fixed, each centroid moved by the summed gradient of "
                                      "its weights, zeros kept; biases train too")


class CompressedMixin:
    """A layer whose weight was decoded from a container: it states the bytes it took in the file."""

    effdnn_file_bits: int = 0
    effdnn_code_bits: float = 32.0

    def effdnn_precision(self) -> LayerPrecision:
        iq = getattr(self, "input_quant", None)  # a quantized layer's input stays quantized
        ak, ab = compute_precision(iq.fmt if iq is not None else None)
        act = f" / a {getattr(iq.fmt, 'label', '') or iq.fmt.name}" if iq is not None else ""
        return LayerPrecision(32, ab, act_kind=ak, storage_bits=int(self.effdnn_file_bits),  # type: ignore[arg-type]
                              label=f"deep-compression {self.effdnn_code_bits:g}b shared{act}")


def _compressed_class(cls: type) -> type:
    if issubclass(cls, CompressedMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Compressed{cls.__name__}", (CompressedMixin, cls), {"__module__": __name__})
    return _CLASSES[cls]


def share_weight(w: torch.Tensor, bits: int, index_bits: int, init: str, use_huffman: bool) -> Shared:
    """The Shared form of a (pruned) weight: its non-zeros as indices into 2^bits shared values."""
    flat = w.detach().reshape(-1).float().cpu()
    positions = torch.nonzero(flat != 0).reshape(-1)
    values = flat[positions]
    distinct = torch.unique(values)
    if len(distinct) <= 2 ** bits and len(distinct) > 0:  # already shared (k-means QAT, or few weights): exact
        codebook = distinct
        codes = torch.searchsorted(distinct, values)
    elif len(distinct) == 0:
        codebook = torch.zeros(1)
        codes = torch.zeros(0, dtype=torch.long)
    else:
        fmt = KMeansFormat(bits, init=init)
        params = fmt.fit(values)
        codebook = params.codebook.reshape(-1)
        codes = fmt.quantize(values, params).reshape(-1)
        used = torch.unique(codes)  # drop centroids no weight uses (empty clusters)
        remap = torch.full((len(codebook),), -1, dtype=torch.long)
        remap[used] = torch.arange(len(used))
        codebook, codes = codebook[used], remap[codes]
    return Shared(tuple(w.shape), codebook.numpy().astype(np.float32), positions.numpy().astype(np.int64),
                  codes.numpy().astype(np.int64), index_bits, huffman=use_huffman, dtype=w.dtype)


class SharedValues(nn.Module):
    """Parametrization of a shared weight: ``w = scatter(codebook[codes], positions)`` on zeros.

    Its ``original`` is the codebook, so training moves the centroids only, each by the sum of the
    gradients of its weights (Deep Compression, section 3.3)."""

    def __init__(self, shared: Shared) -> None:
        super().__init__()
        self.shape = shared.shape
        self.register_buffer("positions", torch.as_tensor(shared.positions, dtype=torch.long))
        self.register_buffer("codes", torch.as_tensor(shared.codes, dtype=torch.long))
        self.register_buffer("init", torch.as_tensor(shared.codebook, dtype=torch.float32))

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        flat = codebook.new_zeros(int(np.prod(self.shape)))
        return flat.scatter(0, self.positions, codebook[self.codes]).reshape(self.shape)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return self.init.to(w.device, w.dtype)


def _deployed_form(model: nn.Module, config: DeepCompressionConfig) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy of the model as the file stores it (masks stripped, BatchNorm folded if asked) and its
    encoded layers."""
    model = copy.deepcopy(model)
    bake_quantized_weights(model)
    for m in model.modules():
        strip_sparse(m)
    if config.fold_bn:  # zeros stay zeros: folding scales each output channel
        fold_batchnorm(model.eval())
    return model, select_layers(model, config.layers, config.exclude, "compress")


@torch.no_grad()
def bake_quantized_weights(model: nn.Module) -> int:
    """Each quantized layer's weight := its deployed (quantized, masked) value, weight quantizer dropped
    (the file's codebook is the weight format from here); returns the number of layers baked."""
    n = 0
    model.eval()
    for m in model.modules():
        if getattr(m, "weight_quant", None) is not None and callable(getattr(m, "_q_weight", None)):
            w = m._q_weight().detach()
            m.weight.data.copy_(w)
            m.weight_quant = None
            n += 1
    return n


AUTO_INDEX_BITS = range(1, 13)  # widths tried by index_bits: auto (the gap table holds 2^bits lengths)


def smallest_index_bits(shared: Shared) -> Shared:
    """``shared`` with the relative-index width (of ``AUTO_INDEX_BITS``) that makes its file section
    smallest: narrow widths need filler zeros for long gaps, wide ones cost bits per entry and a larger
    code table. The paper fixes 8 bits for convolutions and 5 for fully connected layers."""
    options = [replace(shared, index_bits=b) for b in AUTO_INDEX_BITS]
    return min(options, key=lambda s: len(shared_payload(s)))


def _share(layer: nn.Module, config: DeepCompressionConfig) -> Shared:
    conv = isinstance(layer, _CONV)
    bits = (config.conv_bits or config.bits) if conv else config.bits
    ib = (config.conv_index_bits or config.index_bits) if conv else config.index_bits
    shared = share_weight(layer.weight, bits, 1 if ib == "auto" else ib, config.init, config.huffman)
    return smallest_index_bits(shared) if ib == "auto" else shared


def retrain_shared(model: nn.Module, config: DeepCompressionConfig, ctx: TransformContext) -> tuple[nn.Module, dict[str, Any]]:
    """Cluster every selected weight, then train the centroids (codes fixed) with ``config.retrain``."""
    assert config.retrain is not None
    model, layers = _deployed_form(model, config)
    for layer in layers.values():
        parametrize.register_parametrization(layer, "weight", SharedValues(_share(layer, config)), unsafe=True)
    details: dict[str, Any] = {}
    accuracy = ctx.evaluate(model)
    if accuracy is not None:
        details["accuracy_shared"] = accuracy
    ctx.fit(model, config.retrain, desc="retrain-shared", own_callbacks=False)
    for layer in layers.values():
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model.eval(), details


def encode_model(model: nn.Module, config: DeepCompressionConfig, path: str | Path, meta: dict[str, Any] | None = None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Write ``model`` to ``path`` and return (the model read back from the file, details)."""
    model, layers = _deployed_form(model, config)
    if config.fold_bn:
        meta = {**(meta or {}), "fold_bn": True}  # the reader folds a fresh architecture likewise
    state = model.state_dict()
    tensors: dict[str, torch.Tensor | Shared] = {}
    shared_of: dict[str, str] = {}
    for name, t in state.items():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and owner in layers:
            tensors[name] = _share(layers[owner], config)
            shared_of[owner] = name
        else:
            tensors[name] = t.detach().cpu()
    sizes = write_container(path, tensors, meta)
    _, back = read_container(path, expected=model)
    decoded = copy.deepcopy(model)
    load_into(decoded, back, str(path))
    # the file must hold exactly the weights it says: compare against the shared tensors written
    for name, t in tensors.items():
        got = back[name].dense() if isinstance(back[name], Shared) else back[name]
        want = t.dense() if isinstance(t, Shared) else t
        if not torch.equal(got, want):
            raise EffdnnError(f"deep-compression: {name} does not survive the round trip (a bug)")
    details = _attribute(decoded, layers, shared_of, tensors, sizes)
    return decoded, details


def _attribute(model: nn.Module, layers: dict[str, nn.Module], shared_of: dict[str, str], tensors: dict, sizes: dict) -> dict[str, Any]:
    """Give every encoded layer its bytes of the file; the overhead goes to the first one."""
    mods = dict(model.named_modules())
    per_layer = {}
    for owner, wname in shared_of.items():
        mod = mods[owner]
        mod.__class__ = _compressed_class(type(mod))
        other = sum(t.numel() * t.element_size() * 8 for n, t in mod.named_parameters(recurse=False) if n != "weight")
        other += sum(t.numel() * t.element_size() * 8 for n, t in mod.named_buffers(recurse=False))
        mod.effdnn_file_bits = sizes[wname] * 8 + other
        sh: Shared = tensors[wname]
        mod.effdnn_code_bits = max(1, int(np.ceil(np.log2(max(len(sh.codebook), 2)))))
        per_layer[owner] = {"bytes": sizes[wname], "nonzeros": int(len(sh.positions)), "numel": int(np.prod(sh.shape)),
                            "shared_values": int(len(sh.codebook)), "index_bits": sh.index_bits}
    total_bits = sum(deployed_bits(model).values())
    overhead = sizes["<total>"] * 8 - total_bits
    if shared_of:
        first = mods[next(iter(shared_of))]
        first.effdnn_file_bits += overhead
    if sum(deployed_bits(model).values()) != sizes["<total>"] * 8:
        raise EffdnnError("deep-compression: the storage attributed to layers does not add up to the file size (a bug)")
    return {"layers": per_layer, "overhead_bytes": overhead / 8}


@COMPRESS.register("deep-compression", DeepCompressionConfig)
def deep_compression(model: nn.Module, config: DeepCompressionConfig, ctx: TransformContext) -> nn.Module:
    """Deep Compression container: k-means sharing + relative sparse indices + Huffman (Han et al. 2016)."""
    if config.path:
        path = Path(config.path)
    elif ctx.out_dir is not None:
        path = Path(ctx.out_dir) / "model.edc"
    else:
        path = Path(tempfile.mkdtemp(prefix="effdnn-")) / "model.edc"
    meta = {"format": "effdnn deep-compression", "config": config.model_dump(mode="json")}
    retrained: dict[str, Any] = {}
    if config.retrain is not None:
        model, retrained = retrain_shared(model, config, ctx)
    decoded, details = encode_model(model, config, path, meta)
    size = path.stat().st_size
    ctx.extra["container"] = {"path": str(path), "bytes": size, **retrained, **details}
    return decoded


def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """Fill ``model`` (the architecture, e.g. a fresh model of the recipe) with the container's weights;
    its BatchNorms are folded first where the file was written with ``fold_bn``."""
    def prepare(meta: dict[str, Any]) -> nn.Module:  # the shapes to check every section against, as it is read
        if meta.get("fold_bn"):
            fold_batchnorm(model)
        return model

    _, tensors = read_container(path, expected=prepare)
    return load_into(model, tensors, str(path))

"""Op rules of the dependency trace (:mod:`.graph`): how labels move and join through each aten op.

Families (by the op's name, or its ``pointwise`` tag):
- rearrangements: the op itself is run on the label tensor (views, cat, split, index, pad, shuffle);
- pointwise (any broadcasting element-wise op): fields changing along the same dims are joined;
- reductions: a field constant along the reduced dims survives, one that changes there is dropped
  (a channel mean still runs when channels go);
- spatial per-channel ops (pooling, upsampling): the channel field passes;
- contractions (convolution, mm / bmm / addmm / baddbmm, scaled-dot-product attention): the labels
  summed over are joined index by index, across every other dim, or, split into attention heads,
  head by head (attention.py); grouped convolutions lose whole groups or the same channels in every
  group (grouped.py); the others pass to the output;
- norms (batch / layer / group / instance): the affine parameters and statistics join the channels;
- embedding: the output carries the table's feature dim;
- anything else blocks the labels of its inputs.
"""
from __future__ import annotations

from typing import Any

import torch

from .attention import contract, merge, sdpa
from .graph import Recorder, compact, join_by_dims, tensors_in, var_dims
from .grouped import GroupedConv

aten = torch.ops.aten

IDENTITY = {"clone", "contiguous", "_to_copy", "alias", "detach", "lift_fresh", "lift_fresh_copy", "dropout",
            "native_dropout", "_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax", "zeros_like",
            "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "to", "_assert_tensor_metadata"}
REARRANGE = {"view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "expand", "unsqueeze",
             "squeeze", "slice", "select", "narrow", "unbind", "split", "split_with_sizes", "chunk", "flatten",
             "unflatten", "roll", "flip", "repeat", "index_select", "index", "pixel_shuffle", "pixel_unshuffle",
             "channel_shuffle", "native_channel_shuffle", "movedim", "constant_pad_nd", "view_copy", "permute_copy",
             "t_copy", "transpose_copy", "unsqueeze_copy", "squeeze_copy", "slice_copy", "select_copy",
             "split_copy", "unbind_copy", "expand_copy", "unfold", "diagonal", "tile", "repeat_interleave"}
POINTWISE = {"hardswish", "hardsigmoid", "where", "add", "sub", "rsub", "mul", "div", "true_divide", "gt", "lt", "ge",
             "le", "eq", "ne", "log_sigmoid_forward", "remainder", "fmod", "pow", "masked_fill", "clamp", "clip",
             "relu6", "relu", "gelu", "silu", "mish", "sigmoid", "tanh", "logical_and", "logical_or", "bitwise_and"}
SPLITS = {"split", "chunk", "unbind", "split_copy", "unbind_copy", "split_with_sizes"}
RESHAPES = {"view", "_unsafe_view", "reshape", "_reshape_alias", "unflatten", "view_copy"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp", "prod",
          "linalg_vector_norm", "norm", "any", "all"}
NO_LABELS = {"argmax", "argmin", "_local_scalar_dense", "sort", "topk", "nonzero", "bernoulli",
             "is_nonzero", "equal", "new_zeros", "new_ones", "new_empty", "new_full", "item", "sym_size",
             "sym_numel", "sym_stride", "sym_storage_offset", "_assert_async", "isnan", "isinf", "isfinite"}
SPATIAL = {"max_pool2d_with_indices": 2, "max_pool2d": 2, "avg_pool2d": 2, "_adaptive_avg_pool2d": 2,
           "adaptive_avg_pool2d": 2, "adaptive_max_pool2d": 2, "max_pool1d": 1, "avg_pool1d": 1,
           "max_pool1d_with_indices": 1, "adaptive_max_pool1d": 1, "_adaptive_avg_pool3d": 3,
           "avg_pool3d": 3, "max_pool3d_with_indices": 3, "upsample_nearest2d": 2, "upsample_bilinear2d": 2,
           "_upsample_bilinear2d_aa": 2, "upsample_bicubic2d": 2, "_upsample_nearest_exact2d": 2,
           "reflection_pad2d": 2, "replication_pad2d": 2, "upsample_nearest1d": 1, "upsample_linear1d": 1}
BATCH_NORMS = {"native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
               "_native_batch_norm_legit_functional", "batch_norm", "cudnn_batch_norm"}
CONTRACT = {"mm", "bmm", "addmm", "baddbmm", "matmul", "addbmm"}
SDPA = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
        "scaled_dot_product_attention", "_scaled_dot_product_cudnn_attention"}


def _name(func: Any) -> str:
    return func._overloadpacket.__name__.rstrip("_") if hasattr(func, "_overloadpacket") else str(func)


def _outs(out: Any) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def apply_rule(rec: Recorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Update labels / unions for one executed aten op."""
    name = _name(func)
    tensors = tensors_in((args, kwargs))
    if not any(rec.get(t) for t in tensors):  # nothing labelled flows in
        if any(id(t) in rec.adaptive for t in tensors):  # ... but something whose size follows labels
            rec.mark_adaptive(_outs(out))
        return
    if name in IDENTITY or name == "copy":
        src = args[1] if name == "copy" else args[0]
        fields = [compact(f.expand(out.shape)) for f in rec.get(src)] if name == "copy" else rec.get(src)
        rec.set(_outs(out)[0], fields)
    elif name in ("cat", "stack"):
        _cat(rec, name, args, kwargs, out)
    elif name == "as_strided" and args[0].is_contiguous() and args[0].storage_offset() == 0:
        _rearrange(rec, func, "view", args, kwargs, out)  # strides over a contiguous tensor: same on labels
    elif name in REARRANGE:
        _rearrange(rec, func, name, args, kwargs, out)
    elif name in BATCH_NORMS:
        _batch_norm(rec, args, out)
    elif name == "native_layer_norm":
        _pointwise(rec, [args[0], args[2], args[3]], _outs(out)[0])
    elif name == "native_group_norm":
        _group_norm(rec, args, out)
    elif name == "convolution":
        _conv(rec, args, out)
    elif name in CONTRACT:
        _contract_op(rec, name, args, out)
    elif name in SDPA:
        sdpa(rec, args, kwargs, out)
    elif name == "embedding":
        _embedding(rec, args, out)
    elif name in SPATIAL:
        _spatial(rec, SPATIAL[name], args[0], out)
    elif name in REDUCE:
        _reduce(rec, name, args, kwargs, out)
    elif name in ("new_zeros", "new_ones", "new_empty", "new_full"):
        rec.set(out, rec.get(args[0]) if out.shape == args[0].shape else [])
    elif name in ("zero", "fill", "uniform", "normal", "bernoulli") and out is args[0]:
        return  # new values in place: the labels (positions) stay
    elif name in NO_LABELS:
        return
    elif name in POINTWISE or torch.Tag.pointwise in getattr(func, "tags", ()):
        _pointwise(rec, tensors, _outs(out)[0])
    else:
        rec.block_inputs((args, kwargs), f"op {name} (no dependency rule)")


def _full(rec: Recorder, t: torch.Tensor) -> list[torch.Tensor]:
    return [f.expand(t.shape) for f in rec.get(t)]


def _rearrange(rec: Recorder, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Run the op on each label field; a reshape that spreads one field over several dims joins it
    across all but its last such dim (channel shuffle: positions stay consistent after pruning), at the
    end of the pass, unless an attention split those labels into heads (attention.py)."""
    src = args[0]
    results = []
    if name == "constant_pad_nd":  # pad only the dims a field changes along (-1: no channel there)
        pads = list(args[1])
        for f in rec.get(src):
            p = [0 if f.shape[f.dim() - 1 - i // 2] == 1 else v for i, v in enumerate(pads)]
            results.append([torch.constant_pad_nd(f, p, -1)])
        for i, o in enumerate(_outs(out)):
            rec.set(o, [compact(r[i]) for r in results])
        return
    for f in _full(rec, src):
        lab = f.contiguous() if name in RESHAPES else f
        a = list(args)
        a[0] = lab
        results.append(_outs(func(*a, **kwargs)))
    outs = _outs(out)
    if name in SPLITS and len(outs) > 1:
        _join_pieces(rec, name, args, kwargs, outs, results)
    for i, o in enumerate(outs):
        fields = [compact(r[i]) for r in results if i < len(r)]
        if name in RESHAPES:
            for f in fields:
                dims = var_dims(f)
                if len(dims) > 1:
                    g = f
                    for d in dims[:-1]:
                        g = g.narrow(d, 0, 1)
                    rec.defer(f, g)
        rec.set(o, fields)


def _join_pieces(rec: Recorder, name: str, args: tuple, kwargs: dict, outs: list, results: list) -> None:
    """split / chunk / unbind along a labelled dim: the pieces' sizes come from the tensor's size, so
    piece i's position j must go with every other piece's position j (equal pieces), else stay."""
    dim = args[1] if name == "unbind" and len(args) > 1 else args[2] if len(args) > 2 else kwargs.get("dim", 0)
    dim = dim % args[0].dim()
    for r in results:
        pieces = [p for p in r]
        if name == "unbind" or len({p.shape[dim] for p in pieces}) == 1:
            for p in pieces[1:]:
                rec.union(pieces[0], p)
        else:
            rec.block(torch.cat([p.reshape(-1) for p in pieces]), f"{name} into unequal pieces")


def _main(rec: Recorder, t: torch.Tensor) -> torch.Tensor:
    fs = rec.get(t)
    for f in fs[1:]:
        rec.block(f, "concatenated tensor with several label fields")
    return fs[0].expand(t.shape) if fs else torch.full(t.shape, -1, dtype=torch.int64)


def _cat(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Concatenation along a dim the fields change along: an offset map (the op on the labels).
    Along another dim (tokens: class token + patches): the pieces are joined element-wise."""
    ts = list(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    labs = [_main(rec, t) for t in ts]
    ndim = ts[0].dim()
    d = dim % (ndim + (name == "stack"))
    if (name == "cat" and len(labs) > 1 and all(compact(f).shape[d] == 1 for f in labs)
            and any(f.shape[d] > 1 for f in labs)):
        firsts = [compact(f).narrow(d, 0, 1) for f, t in zip(labs, ts) if f.shape[d] and rec.get(t)]
        for f in firsts[1:]:
            rec.union(firsts[0], f)
        rec.set(out, [firsts[0]])
        return
    lab = torch.cat(labs, d) if name == "cat" else torch.stack(labs, d)
    rec.set(out, [compact(lab)])


def _pointwise(rec: Recorder, tensors: list, out: torch.Tensor) -> None:
    """Broadcast every field to the output; fields changing along the same dims are joined. A field
    whose partner operand (same size there) carries no such field is blocked (sizes must match)."""
    if not isinstance(out, torch.Tensor):
        return
    by_dims: dict[tuple[int, ...], torch.Tensor] = {}
    operands = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.dim() > out.dim():
            continue
        fs = [compact(f.expand(out.shape)) for f in rec.get(t)]
        operands.append((t, {var_dims(f) for f in fs}))
        join_by_dims(rec, by_dims, fs)
    kept = []
    for dims, f in by_dims.items():
        fixed = False
        for t, have in operands:  # an expanded operand (stride 0, expand_as) follows the other's size
            lead = out.dim() - t.dim()
            if dims not in have and id(t) not in rec.adaptive and \
                    any(d >= lead and t.shape[d - lead] > 1 and t.stride(d - lead) != 0 for d in dims):
                fixed = True
        if fixed:  # the other operand's size is fixed: these labels stay, and the result is fixed too
            rec.block(f, "element-wise op with an unlabelled operand of the same size")
        else:
            kept.append(f)
    rec.set(out, kept)


def _reduce(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name in ("linalg_vector_norm", "norm"):  # (self, ord / p, dim, keepdim)
        args = (args[0],) + tuple(args[2:])
    x = args[0]
    dims = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
    keep = (args[2] if len(args) > 2 and isinstance(args[2], bool) else kwargs.get("keepdim", False))
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return
    dims = sorted({d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)})
    fields, dropped = [], False
    for f in rec.get(x):
        if all(f.shape[d] == 1 for d in dims):
            fields.append(f if keep else f.squeeze(dims) if dims else f)
        else:
            dropped = True
    rec.set(_outs(out)[0], fields)
    if dropped:  # a norm over channels: no labels left, but its other dims follow the input's
        rec.mark_adaptive(_outs(out)[:1])


def _spatial(rec: Recorder, k: int, x: torch.Tensor, out: Any) -> None:
    """Pooling / upsampling / padding: each channel alone over its last ``k`` dims."""
    fields = []
    for f in rec.get(x):
        if all(s == 1 for s in f.shape[x.dim() - k:]):
            fields.append(f)
        else:
            rec.block(f, "spatial op over labelled dims")
    rec.set(_outs(out)[0], fields)


def _vec(rec: Recorder, t: torch.Tensor | None, dim: int, why: str) -> torch.Tensor | None:
    """The labels of ``t`` along ``dim`` (a 1-D vector), from its field that changes along ``dim`` alone."""
    if t is None:
        return None
    vec = None
    for f in rec.get(t):
        dims = var_dims(f)
        if dims == (dim % t.dim(),) and vec is None:
            vec = f.reshape(-1)
        else:
            rec.block(f, why)
    return vec


def _batch_norm(rec: Recorder, args: tuple, out: Any) -> None:
    x = args[0]
    chan = _vec(rec, x, 1, "batch norm input labelled off the channel dim")
    for p in args[1:5]:
        v = _vec(rec, p, 0, "batch norm parameter")
        if v is not None and chan is not None:
            rec.union(chan, v)
    rec.set(_outs(out)[0], [] if chan is None else [chan.reshape([1, -1] + [1] * (x.dim() - 2))])


def _group_norm(rec: Recorder, args: tuple, out: Any) -> None:
    """GroupNorm: channels join their affine parameters; with 1 < groups < C a group goes whole."""
    x, groups = args[0], int(args[6])
    chan = _vec(rec, x, 1, "group norm input labelled off the channel dim")
    for p in args[1:3]:
        v = _vec(rec, p, 0, "group norm parameter")
        if v is not None and chan is not None:
            rec.union(chan, v)
    if chan is not None and 1 < groups < chan.numel():
        rows = chan.reshape(groups, -1)
        rec.union(rows, rows[:, :1])
    rec.set(_outs(out)[0], [] if chan is None else [chan.reshape([1, -1] + [1] * (x.dim() - 2))])


def _conv(rec: Recorder, args: tuple, out: torch.Tensor) -> None:
    """Convolution: input channels join the kernel's input dim (groups == 1); a grouped one is recorded
    and loses whole groups or the same channels in every group (grouped.py)."""
    x, w, b, transposed, groups = args[0], args[1], args[2], bool(args[6]), int(args[8])
    xin = _vec(rec, x, 1, "convolution input labelled off the channel dim")
    w_out_dim, w_in_dim = (1, 0) if transposed else (0, 1)
    fields = {var_dims(f): f.reshape(-1) for f in rec.get(w)}
    wout, win = fields.get((w_out_dim,)), fields.get((w_in_dim,))
    if transposed and groups > 1:
        rec.block_inputs(args, "grouped transposed convolution")
        rec.set(out, [])
        return
    if groups == 1:
        if xin is not None and win is not None:
            rec.union(xin, win)
    else:  # fewer or narrower groups: decided after the pass (grouped.py)
        name = rec.slot_names.get(id(w), "").rsplit(".", 1)[0]
        rec.grouped.append(GroupedConv(name, groups, xin, win, wout))
    bias = _vec(rec, b, 0, "convolution bias")
    if bias is not None and wout is not None:
        rec.union(bias, wout)
    rec.set(out, [] if wout is None else [wout.reshape([1, -1] + [1] * (out.dim() - 2))])


def _contract_op(rec: Recorder, name: str, args: tuple, out: torch.Tensor) -> None:
    if name in ("addmm", "baddbmm", "addbmm"):
        bias, a, b = args[0], args[1], args[2]
    else:
        bias, a, b = None, args[0], args[1]
    if a.dim() == 1 or b.dim() == 1:
        rec.block_inputs(args, f"{name} with a vector operand")
        rec.set(out, [])
        return
    fields = contract(rec, a, b, out.shape)
    if bias is not None:
        fields += [compact(f.expand(bias.shape).expand(out.shape)) for f in rec.get(bias)]
    rec.set(out, merge(rec, fields))


def _embedding(rec: Recorder, args: tuple, out: torch.Tensor) -> None:
    w = args[0]
    feat = _vec(rec, w, 1, "embedding table labelled off its feature dim")
    rec.set(out, [] if feat is None else [feat.reshape([1] * (out.dim() - 1) + [-1])])



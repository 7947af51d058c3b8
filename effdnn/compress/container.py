"""The Deep-Compression container: a documented binary file, no pickle.

File layout (integers little-endian)::

    header   magic b"EFDC" | version u16 (= 1) | flags u16 (= 0) | section count u32
    section  kind u8 | name length u16 | name (UTF-8) | payload length u64 | payload
    ...
    trailer  CRC-32 (zlib.crc32) of every byte before it, u32

Section kinds:

- ``0`` META: UTF-8 JSON object (what made the file; free-form, informational).
- ``1`` RAW tensor: dtype u8 | ndim u8 | dims u32 x ndim | the elements, C order (numel x itemsize bytes).
- ``2`` SHARED tensor (Han et al. 2016, "Deep Compression", sections 2-4): the non-zeros of a pruned
  weight, each the index of a shared value, with relative positions::

      dtype u8 | ndim u8 | dims u32 x ndim
      k u16 | codebook: k x float32            (the shared values)
      index_bits u8                            (width of a relative index; gaps up to 2^index_bits - 1)
      entries u32                              (stored (gap, symbol) pairs, fillers included)
      code lengths: (k + 1) x u8               (canonical Huffman code of the symbols; symbol k = filler zero)
      gap lengths: 2^index_bits x u8           (canonical Huffman code of the gaps)
      symbol stream bits u32 | gap stream bits u32
      symbol stream (ceil(bits / 8) bytes) | gap stream (ceil(bits / 8) bytes)

  Entry i sits ``gap_i + 1`` positions after entry i - 1 (the first after position -1) in the
  flattened tensor and holds ``codebook[symbol_i]``; every other element is zero. A run of more than
  2^index_bits - 1 zeros is bridged by *filler zeros* (paper, Figure 3): an entry with the largest gap
  and the filler symbol k, whose value is 0. Without Huffman coding the tables simply give every
  symbol the same length (a fixed-width code).

The reader checks everything (magic, version, lengths against the bytes present, the checksum, code
tables, positions, finite values) and raises :class:`ContainerError` (an ``EffdnnError``: one line) on
any defect. Every claimed size is checked *before* anything is allocated: a RAW section must hold
exactly numel x itemsize bytes; a SHARED section's entries need a bit each in both streams, which
must fill the section; a tensor has at most MAX_NUMEL elements and, when the reader is given the
model, exactly the shape the model wants; META is at most MAX_META_BYTES, nested MAX_META_DEPTH deep.
Reading thus costs time and memory in proportion to the file, not to what it claims.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EffdnnError
from . import huffman
from .bounded import ByteReader, bounded_json_object

MAGIC = b"EFDC"
VERSION = 1
META, RAW, SHARED = 0, 1, 2
MAX_NUMEL = 1 << 28  # elements of one tensor: 1 GiB as float32, 2.6x VGG-16's fc6 (102.8 M), the paper's largest
MAX_DIMS = 8
MAX_META_BYTES = 1 << 16  # the writer's META is a few hundred bytes
MAX_META_DEPTH = 32
SECTION_HEADER = 11  # kind u8 | name length u16 | payload length u64

_DTYPES: dict[int, tuple[torch.dtype, str]] = {
    0: (torch.float32, "<f4"), 1: (torch.float64, "<f8"), 2: (torch.float16, "<f2"), 3: (torch.bfloat16, "<i2"),
    4: (torch.int64, "<i8"), 5: (torch.int32, "<i4"), 6: (torch.int16, "<i2"), 7: (torch.int8, "<i1"),
    8: (torch.uint8, "<u1"), 9: (torch.bool, "<u1"),
}
_CODE = {dt: c for c, (dt, _) in _DTYPES.items()}


class ContainerError(EffdnnError):
    """A container file that is missing, truncated, altered or not a container."""


@dataclass
class Shared:
    """A pruned, weight-shared tensor: ``codebook[codes]`` at ``positions`` (flattened), zero elsewhere."""

    shape: tuple[int, ...]
    codebook: np.ndarray  # (k,) float32
    positions: np.ndarray  # (nnz,) int64, increasing
    codes: np.ndarray  # (nnz,) int64 in [0, k)
    index_bits: int
    huffman: bool = True
    dtype: torch.dtype = torch.float32

    def dense(self) -> torch.Tensor:
        flat = np.zeros(int(np.prod(self.shape, dtype=np.int64)), dtype=np.float32)
        flat[self.positions] = self.codebook[self.codes]
        return torch.from_numpy(flat).reshape(self.shape).to(self.dtype)


# -- relative indices with filler zeros -----------------------------------------------------------

def relative_entries(positions: np.ndarray, codes: np.ndarray, index_bits: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, symbols) for increasing ``positions``; gaps beyond 2^index_bits - 1 get filler entries."""
    top = (1 << index_bits) - 1
    gaps = np.diff(np.concatenate([[-1], positions])) - 1  # zeros skipped before each entry
    n_fill = gaps // (top + 1)  # each filler consumes top zeros and stands on one more
    total = len(gaps) + int(n_fill.sum())
    out_g = np.full(total, top, dtype=np.int64)
    out_s = np.full(total, filler, dtype=np.int64)
    at = np.arange(len(gaps)) + np.cumsum(n_fill)  # where each real entry lands after its fillers
    out_g[at] = gaps - n_fill * (top + 1)
    out_s[at] = codes
    return out_g, out_s


def absolute_positions(gaps: np.ndarray, symbols: np.ndarray, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`relative_entries`: (positions, codes) of the non-filler entries."""
    pos = np.cumsum(gaps + 1) - 1
    real = symbols != filler
    return pos[real], symbols[real]


# -- writing ----------------------------------------------------------------------------------------

def _shape_bytes(code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack("<BB", code, len(shape)) + b"".join(struct.pack("<I", d) for d in shape)


def _tables(values: np.ndarray, alphabet: int, use_huffman: bool) -> np.ndarray:
    if use_huffman:
        return huffman.code_lengths(np.bincount(values, minlength=alphabet))
    width = max(1, math.ceil(math.log2(max(alphabet, 2))))
    return np.full(alphabet, width, dtype=np.int64)


def shared_payload(t: Shared) -> bytes:
    k = len(t.codebook)
    if not (1 <= k <= 65535) or not (1 <= t.index_bits <= 16):
        raise ContainerError(f"codebook size {k} or index bits {t.index_bits} out of range")
    if not np.isfinite(t.codebook).all():
        raise ContainerError("cannot store a codebook holding NaN or infinite values (the reader refuses them)")
    gaps, syms = relative_entries(t.positions, t.codes, t.index_bits, filler=k)
    sym_len = _tables(syms, k + 1, t.huffman)
    gap_len = _tables(gaps, 1 << t.index_bits, t.huffman)
    if not t.huffman and syms.size == 0:
        sym_len[:] = 0
        gap_len[:] = 0
    sym_bytes, sym_bits = huffman.encode(syms, sym_len)
    gap_bytes, gap_bits = huffman.encode(gaps, gap_len)
    return b"".join([
        _shape_bytes(_CODE[t.dtype], t.shape),
        struct.pack("<H", k), t.codebook.astype("<f4").tobytes(),
        struct.pack("<BI", t.index_bits, len(syms)),
        sym_len.astype(np.uint8).tobytes(), gap_len.astype(np.uint8).tobytes(),
        struct.pack("<II", sym_bits, gap_bits), sym_bytes, gap_bytes,
    ])


def raw_payload(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _CODE:
        raise ContainerError(f"cannot store a tensor of dtype {t.dtype}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ContainerError("cannot store a tensor holding NaN or infinite values (the reader refuses them)")
    arr = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().astype(_DTYPES[_CODE[t.dtype]][1])
    return _shape_bytes(_CODE[t.dtype], tuple(t.shape)) + arr.tobytes()


def section(kind: int, name: str, payload: bytes) -> bytes:
    nb = name.encode("utf-8")
    return struct.pack("<BH", kind, len(nb)) + nb + struct.pack("<Q", len(payload)) + payload


def write_container(path: str | Path, tensors: dict[str, torch.Tensor | Shared], meta: dict[str, Any] | None = None) -> dict[str, int]:
    """Write ``tensors`` (name -> raw tensor or :class:`Shared`) to ``path`` atomically.

    Returns the bytes each section takes (header included), with ``"<file>"`` overhead (file header,
    META section, trailer) and ``"<total>"`` the file size."""
    parts = [section(META, "meta", json.dumps(meta or {}, sort_keys=True).encode())]
    sizes = {}
    for name, t in tensors.items():
        body = section(SHARED, name, shared_payload(t)) if isinstance(t, Shared) else section(RAW, name, raw_payload(t))
        sizes[name] = len(body)
        parts.append(body)
    blob = MAGIC + struct.pack("<HHI", VERSION, 0, len(parts)) + b"".join(parts)
    blob += struct.pack("<I", zlib.crc32(blob) & 0xFFFFFFFF)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    sizes["<file>"] = len(blob) - sum(sizes.values())
    sizes["<total>"] = len(blob)
    return sizes


# -- reading (sizes checked before allocating: see the module's docstring) ---------------------------

Expected = torch.nn.Module | Mapping[str, torch.Tensor | Sequence[int]]
_Want = dict[str, tuple[tuple[int, ...], torch.dtype | None]]


def _want(expected: Expected | Callable[[dict[str, Any]], Expected], meta: dict[str, Any]) -> _Want:
    """name -> (shape, dtype or None) of what the caller expects the file to hold."""
    if callable(expected) and not isinstance(expected, torch.nn.Module):
        expected = expected(meta)
    items = expected.state_dict().items() if isinstance(expected, torch.nn.Module) else expected.items()
    return {name: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else (tuple(int(d) for d in t), None)
            for name, t in items}


def _shape(r: ByteReader, name: str, want: _Want | None) -> tuple[torch.dtype, str, tuple[int, ...], int]:
    code, ndim = r.unpack("<BB", "shape")
    if code not in _DTYPES:
        raise r.fail(f"unknown dtype code {code}")
    if ndim > MAX_DIMS:
        raise r.fail(f"{ndim} dimensions (at most {MAX_DIMS})")
    shape = tuple(r.unpack(f"<{ndim}I", "shape")) if ndim else ()
    numel, span = 1, 1
    for d in shape:
        numel *= d
        span *= max(d, 1)  # also bounds the strides of an empty tensor
    if span > MAX_NUMEL:
        raise r.fail(f"shape {shape} is too large (over {MAX_NUMEL} elements)")
    dt, np_dt = _DTYPES[code]
    if want is not None:
        if name not in want:
            raise r.fail("the model has no such tensor")
        w_shape, w_dt = want[name]
        if shape != w_shape or (w_dt is not None and dt != w_dt):
            raise r.fail(f"shape {shape} {dt}, the model wants {w_shape} {w_dt or ''}".rstrip())
    return dt, np_dt, shape, numel


def _read_raw(r: ByteReader, name: str, want: _Want | None) -> torch.Tensor:
    dt, np_dt, shape, numel = _shape(r, name, want)
    size = np.dtype(np_dt).itemsize
    if numel * size != r.left():
        raise r.fail(f"{shape} {dt} needs {numel * size} bytes, the section holds {r.left()}")
    arr = np.frombuffer(r.take(numel * size, "data"), dtype=np_dt).astype(np.dtype(np_dt).newbyteorder("="))
    t = torch.from_numpy(arr).reshape(shape)
    if dt == torch.bfloat16:
        t = t.view(torch.bfloat16)
    elif dt == torch.bool:
        if (arr > 1).any():
            raise r.fail("boolean tensor with values other than 0 / 1")
        t = t.to(torch.bool)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise r.fail("tensor holds NaN or infinite values")
    return t


def _shared_head(r: ByteReader, name: str, want: _Want | None
                 ) -> tuple[torch.dtype, tuple[int, ...], int, np.ndarray, int, int]:
    """dtype, shape, numel, codebook, index bits and entries of a SHARED section, each checked."""
    dt, _, shape, numel = _shape(r, name, want)
    if not dt.is_floating_point:
        raise r.fail("a shared tensor must be floating point")
    (k,) = r.unpack("<H", "codebook size")
    if k == 0:
        raise r.fail("empty codebook")
    codebook = np.frombuffer(r.take(4 * k, "codebook"), dtype="<f4").astype(np.float32)
    if not np.isfinite(codebook).all():
        raise r.fail("codebook holds NaN or infinite values")
    index_bits, entries = r.unpack("<BI", "index header")
    if not 1 <= index_bits <= 16:
        raise r.fail(f"index bits {index_bits} out of range 1..16")
    if entries > numel:
        raise r.fail(f"{entries} entries for {numel} elements")
    # each entry takes at least one bit of each stream, and the streams lie within the section
    if 2 * entries > 8 * r.left():
        raise r.fail(f"{entries} entries cannot fit in the {r.left()} bytes left")
    return dt, shape, numel, codebook, index_bits, entries


def _read_shared(r: ByteReader, name: str, want: _Want | None) -> Shared:
    dt, shape, numel, codebook, index_bits, entries = _shared_head(r, name, want)
    k = len(codebook)
    sym_len = np.frombuffer(r.take(k + 1, "symbol code table"), dtype=np.uint8).astype(np.int64)
    gap_len = np.frombuffer(r.take(1 << index_bits, "gap code table"), dtype=np.uint8).astype(np.int64)
    sym_bits, gap_bits = r.unpack("<II", "stream lengths")
    if (sym_bits + 7) // 8 + (gap_bits + 7) // 8 != r.left():
        raise r.fail(f"streams of {sym_bits} + {gap_bits} bits do not fill the {r.left()} bytes left")
    if entries > min(sym_bits, gap_bits) or (entries == 0 and sym_bits + gap_bits):
        raise r.fail(f"{entries} entries in streams of {sym_bits} and {gap_bits} bits")
    sym_data = r.take((sym_bits + 7) // 8, "symbol stream")
    gap_data = r.take((gap_bits + 7) // 8, "gap stream")
    try:
        syms = huffman.decode(sym_data, sym_bits, entries, sym_len)
        gaps = huffman.decode(gap_data, gap_bits, entries, gap_len)
    except huffman.HuffmanError as e:
        raise r.fail(str(e)) from None
    if entries and int((gaps + 1).sum()) > numel:
        raise r.fail("entries run past the end of the tensor")
    positions, codes = absolute_positions(gaps, syms, filler=k)
    return Shared(shape, codebook, positions, codes, index_bits, huffman=True, dtype=dt)


def _read_meta(body: ByteReader) -> dict[str, Any]:
    return bounded_json_object(body, "META", MAX_META_BYTES, MAX_META_DEPTH)


def _section(r: ByteReader, i: int) -> tuple[int, str, ByteReader]:
    kind, nlen = r.unpack("<BH", f"section {i} header")
    try:
        name = bytes(r.take(nlen, f"section {i} name")).decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail(f"section {i}: name is not UTF-8") from None
    (plen,) = r.unpack("<Q", f"section {i} length")
    return kind, name, r.sub(plen, f"section {name!r} payload", f"{r.where}: section {name!r}")


def _open(data: bytes, where: str) -> tuple[ByteReader, int]:
    """A reader past the header, and the section count; magic, checksum, version and flags checked."""
    if len(data) < 16:
        raise ContainerError(f"{where}: truncated ({len(data)} bytes): not an effdnn container")
    if data[:4] != MAGIC:
        raise ContainerError(f"{where}: not an effdnn container (bad magic {bytes(data[:4])!r})")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise ContainerError(f"{where}: checksum mismatch: the file is truncated or altered")
    r = ByteReader(memoryview(data)[:-4], where, ContainerError)
    r.take(4, "magic")
    version, flags, count = r.unpack("<HHI", "header")
    if version != VERSION:
        raise r.fail(f"container version {version} is not supported (this reader: {VERSION})")
    if flags:
        raise r.fail(f"unknown flags {flags:#x}")
    if count * SECTION_HEADER > r.left():
        raise r.fail(f"{count} sections cannot fit in the {r.left()} bytes left")
    return r, count


def parse_container(data: bytes, where: str = "container",
                    expected: Expected | Callable[[dict[str, Any]], Expected] | None = None,
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor | Shared]]:
    """(meta, name -> tensor or Shared) of a container's bytes; ContainerError on any defect.

    ``expected`` (a model, or name -> tensor or shape; or a function of the META read so far that
    returns one, called at the first tensor) makes every tensor's name, shape and dtype checked
    against it as soon as its header is read, and a missing tensor an error."""
    r, count = _open(data, where)
    meta: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor | Shared] = {}
    want: _Want | None = None
    for i in range(count):
        kind, name, body = _section(r, i)
        if kind == META:
            meta.update(_read_meta(body))
            continue
        if kind not in (RAW, SHARED):
            raise body.fail(f"unknown section kind {kind}")
        if name in tensors:
            raise body.fail("tensor stored twice")
        if want is None and expected is not None:
            want = _want(expected, meta)
        tensors[name] = _read_raw(body, name, want) if kind == RAW else _read_shared(body, name, want)
        body.done(f"section {name!r}")
    r.done("the file")
    if expected is not None:
        missing = sorted(set(want if want is not None else _want(expected, meta)) - set(tensors))
        if missing:
            raise ContainerError(f"{where}: does not match the model (missing: {missing[:3]})")
    return meta, tensors


def read_container(path: str | Path, expected: Expected | Callable[[dict[str, Any]], Expected] | None = None,
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor | Shared]]:
    """(meta, name -> tensor or Shared) of a container file; ContainerError on any defect.

    Pass ``expected`` (the model to fill, see :func:`parse_container`) whenever it is known: a file
    claiming other shapes is then refused before anything of those shapes is allocated."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ContainerError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_container(data, str(path), expected)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor | Shared], where: str = "container") -> torch.nn.Module:
    """Copy the file's tensors into ``model`` (same names, shapes and dtypes as its state_dict, exactly).
    Shapes and dtypes are compared before a shared tensor is expanded."""
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise ContainerError(f"{where}: does not match the model (missing: {missing[:3]}, unexpected: {extra[:3]})")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(state[name].shape) or t.dtype != state[name].dtype:
            raise ContainerError(f"{where}: {name} is {tuple(t.shape)} {t.dtype}, the model wants "
                                 f"{tuple(state[name].shape)} {state[name].dtype}")
    model.load_state_dict({name: t.dense() if isinstance(t, Shared) else t for name, t in tensors.items()})
    return model

"""Reader of the IDX format (LeCun's MNIST files, and Fashion-MNIST's), gzipped or not.

Layout: magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then the data in
big-endian order. Every check fails with one EffdnnError line naming the file.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import EffdnnError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise EffdnnError(f"{path}: cannot read IDX file ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or plain, detected by content)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise EffdnnError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise EffdnnError(f"{path}: not an IDX file (unknown data type code 0x{code:02x})")
    if ndim == 0:
        raise EffdnnError(f"{path}: IDX file with 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise EffdnnError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise EffdnnError(
            f"{path}: IDX size mismatch: header says {shape} ({expected} bytes), file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an IDX file (used by tests and by users who convert their own data)."""
    path = Path(path)
    arr = np.asarray(array)
    for code, dt in IDX_DTYPES.items():
        if dt.kind == arr.dtype.kind and dt.itemsize == arr.dtype.itemsize:
            break
    else:
        raise EffdnnError(f"{path}: dtype {arr.dtype} cannot be stored in IDX")
    body = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes() + arr.astype(dt).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(body)

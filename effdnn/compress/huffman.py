"""Canonical Huffman coding (Huffman 1952; canonical form as in DEFLATE, RFC 1951 section 3.2.2).

A code is described by one length per symbol (0 = symbol absent), so a file stores only the lengths.
Lengths are limited to ``MAX_LEN`` bits (frequencies are flattened until the tree fits), which keeps
the decoder's look-up table at 2^MAX_LEN entries. Bits are written most significant first.
"""
from __future__ import annotations

import heapq

import numpy as np

MAX_LEN = 16


class HuffmanError(ValueError):
    """A code table or bit stream that cannot be decoded."""


def code_lengths(freqs: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length of every symbol (0 where the frequency is 0; 1 for a lone symbol)."""
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(len(freqs), dtype=np.int64)
    used = np.flatnonzero(freqs)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    f = freqs[used].copy()
    while True:
        heap = [(int(w), i, [i]) for i, w in enumerate(f)]  # (weight, tie-breaker, leaves)
        heapq.heapify(heap)
        depth = np.zeros(len(f), dtype=np.int64)
        tie = len(f)
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            depth[a] += 1
            depth[b] += 1
            heapq.heappush(heap, (w1 + w2, tie, a + b))
            tie += 1
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        f = f // 2 + 1  # flatten the distribution and try again (a shallower tree)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code word of every symbol (shorter codes first, then by symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def check_lengths(lengths: np.ndarray, max_len: int = MAX_LEN) -> None:
    """A table is usable if its lengths lie in 0..max_len and obey Kraft's inequality (sum 2^-l <= 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > max_len):
        raise HuffmanError(f"code lengths must lie in 0..{max_len}")
    if sum(1 << (max_len - int(l)) for l in lengths if l) > (1 << max_len):
        raise HuffmanError("code lengths violate Kraft's inequality")


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """(bytes, number of bits) of ``symbols`` under the canonical code of ``lengths``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b"", 0
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths[symbols] == 0).any():
        raise HuffmanError("a symbol to encode has no code")
    codes = canonical_codes(lengths)
    ls, cs = lengths[symbols], codes[symbols]
    total = int(ls.sum())
    ends = np.cumsum(ls)
    starts = ends - ls
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(ls.max())):  # bit j (from the most significant) of every code word at once
        has = ls > j
        bits[starts[has] + j] = (cs[has] >> (ls[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), total


def decode(data: bytes | memoryview, nbits: int, count: int, lengths: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """``count`` symbols from the first ``nbits`` bits of ``data``; HuffmanError on any inconsistency.
    Memory: the output, the bits (one byte each) and look-ups for ``chunk`` bit positions at a time."""
    lengths = np.asarray(lengths, dtype=np.int64)
    check_lengths(lengths)
    if nbits > len(data) * 8 or nbits < 0:
        raise HuffmanError("bit count exceeds the stream")
    if count == 0:
        if nbits:
            raise HuffmanError("bits left over after the last symbol")
        return np.zeros(0, dtype=np.int64)
    if not lengths.any():
        raise HuffmanError("symbols to decode but an empty code table")
    width = int(lengths.max())
    if count > nbits:  # every code word has at least one bit
        raise HuffmanError("more symbols than bits")
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        l = int(lengths[sym])
        lo = int(codes[sym]) << (width - l)
        table_sym[lo:lo + (1 << (width - l))] = sym
        table_len[lo:lo + (1 << (width - l))] = l
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=nbits)
    out = np.empty(count, dtype=np.int64)
    pos = i = 0
    for start in range(0, nbits, chunk):  # a chunk of windows at a time: memory bounded by the chunk
        stop = min(start + chunk, nbits)
        if pos >= stop:
            continue
        seg = np.concatenate([bits[start:stop + width], np.zeros(width, dtype=np.uint8)])  # full windows
        windows = np.zeros(stop - start, dtype=np.int32)
        for j in range(width):  # the ``width``-bit window starting at every bit position
            windows = (windows << 1) | seg[j:j + stop - start]
        sym_at = table_sym[windows].tolist()
        len_at = table_len[windows].tolist()
        while i < count and pos < stop:
            s = sym_at[pos - start]
            if s < 0:
                raise HuffmanError("invalid code word in the bit stream")
            out[i] = s
            i += 1
            pos += len_at[pos - start]
        if i == count:
            break
    if i < count:
        raise HuffmanError("bit stream ends before the last symbol")
    if pos != nbits:
        raise HuffmanError("bit stream length does not match its symbols")
    return out

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effdnn.compress.huffman import HuffmanError, canonical_codes, check_lengths, code_lengths, decode, encode


def test_code_lengths_of_a_known_distribution():
    # frequencies 45, 13, 12, 16, 9, 5 (CLRS example): lengths 1, 3, 3, 3, 4, 4
    assert code_lengths(np.array([45, 13, 12, 16, 9, 5])).tolist() == [1, 3, 3, 3, 4, 4]
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = np.array([2, 1, 3, 3])
    codes = canonical_codes(lengths)
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111]


def test_length_limit_holds_for_skewed_frequencies():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(np.array(fib), max_len=16)
    assert lengths.max() <= 16
    check_lengths(lengths)


def test_near_entropy():
    rng = np.random.default_rng(0)
    s = np.minimum(rng.geometric(0.3, size=20000) - 1, 30)
    f = np.bincount(s, minlength=31)
    lengths = code_lengths(f)
    data, nbits = encode(s, lengths)
    p = f[f > 0] / f.sum()
    entropy = -(p * np.log2(p)).sum()
    assert entropy <= nbits / len(s) < entropy + 1
    assert (decode(data, nbits, len(s), lengths) == s).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=300))
def test_round_trip(symbols):
    s = np.array(symbols, dtype=np.int64)
    lengths = code_lengths(np.bincount(s, minlength=41))
    data, nbits = encode(s, lengths)
    assert decode(data, nbits, len(s), lengths).tolist() == symbols


def test_bad_tables_and_streams():
    with pytest.raises(HuffmanError, match="Kraft"):
        check_lengths(np.array([1, 1, 1]))
    lengths = np.array([1, 2, 2])
    data, nbits = encode(np.array([0, 1, 2, 0]), lengths)
    with pytest.raises(HuffmanError):
        decode(data, nbits - 1, 4, lengths)
    with pytest.raises(HuffmanError):
        decode(data, nbits, 5, lengths)
    with pytest.raises(HuffmanError, match="exceeds"):
        decode(data, 100, 4, lengths)
    incomplete = np.array([2, 2, 0])  # codes 00, 01: the word 1x is invalid
    with pytest.raises(HuffmanError, match="invalid"):
        decode(bytes([0b11000000]), 2, 1, incomplete)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=400), st.integers(1, 64))
def test_decoding_chunk_by_chunk_is_exact(symbols, chunk):
    """The decoder looks code words up a chunk of bit positions at a time (bounded memory): any chunk
    size gives the same symbols, and the same errors on a truncated stream."""
    sy = np.array(symbols)
    lengths = code_lengths(np.bincount(sy, minlength=301))
    data, nbits = encode(sy, lengths)
    assert decode(data, nbits, len(sy), lengths, chunk=chunk).tolist() == symbols
    if nbits > 1:
        with pytest.raises(HuffmanError):
            decode(data, nbits - 1, len(sy), lengths, chunk=chunk)


def test_decoding_memory_does_not_grow_with_the_stream():
    import tracemalloc

    rng = np.random.default_rng(0)
    sy = rng.integers(0, 256, 400_000)
    lengths = code_lengths(np.bincount(sy, minlength=256))
    data, nbits = encode(sy, lengths)  # ~3.2 M bits
    tracemalloc.start()
    out = decode(data, nbits, len(sy), lengths, chunk=1 << 18)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(out, sy)
    # the output (8 B a symbol) and one byte a bit, plus one chunk of look-ups: not 8+ bytes a bit
    assert peak < 8 * len(sy) + 2 * nbits + 40 * (1 << 18)  # ~20 MB; all bits at once took ~150 MB

"""The container reader against hostile files: fuzzed mutations of real containers (checksums
recomputed), crafted files claiming huge tensors, deep META nesting, non-finite values."""
import importlib.util
import json
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from effdnn.compress import container
from effdnn.compress.container import (MAGIC, META, RAW, SHARED, ContainerError, Shared, load_into, parse_container,
                                       read_container, section, write_container)

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_container.py"


def _fuzz_module():
    """benchmarks/fuzz_container.py: the CI test runs the benchmark's own mutations, fewer of them."""
    if "effdnn_bench_fuzz_container" not in sys.modules:
        spec = importlib.util.spec_from_file_location("effdnn_bench_fuzz_container", _BENCH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclass looks itself up there
        spec.loader.exec_module(mod)
    return sys.modules["effdnn_bench_fuzz_container"]


def _file(*sections: bytes) -> bytes:
    body = MAGIC + struct.pack("<HHI", 1, 0, len(sections)) + b"".join(sections)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def _refused(data: bytes, **kw) -> tuple[str, float, int]:
    """(message, seconds, peak bytes traced) of a read that must raise ContainerError."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ContainerError) as e:
            parse_container(data, "crafted", **kw)
        return str(e.value), time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fuzzed_containers_are_read_or_refused_in_one_line():
    """3,000 mutations of two real containers (bit flips, byte sets, cuts, insertions, deletions,
    duplicated chunks, tampered size / shape / count fields, hostile META), each re-checksummed:
    every read succeeds or raises a one-line ContainerError, nothing else."""
    fz = _fuzz_module()
    st = fz.run(3000, seed=0)
    assert st.unhandled == 0, st.failures
    assert st.multiline == 0
    assert st.mutations == 3000 and st.accepted + st.refused == 3000
    assert st.accepted > 0 and st.refused > 2000  # both outcomes exercised, mostly refusals
    # the refusals come from all over the parser, not from one early check
    text = " | ".join(st.errors)
    for part in ("checksum", "META", "the model wants", "entries", "code lengths", "too large", "truncated",
                 "unknown dtype", "needs"):
        if part != "checksum":  # every mutation is re-checksummed: the CRC never refuses one
            assert part in text, part
    assert "checksum" not in text
    assert len(st.errors) >= 40


def test_fuzz_mutations_keep_valid_checksums_and_fields_point_at_the_fields():
    fz = _fuzz_module()
    blobs, model = fz.sample_containers()
    for blob in blobs:
        offsets = fz.fields(blob)
        assert fz.with_crc(blob[:-4]) == blob
        _, tensors = parse_container(blob, expected=model)
        # the section count and every tensor's first dimension are where fields() says
        assert struct.unpack_from("<I", blob, offsets[0][0])[0] == len(tensors) + 1
        dims = [struct.unpack_from(f, blob, at)[0] for at, f in offsets if f == "<I"]
        assert tensors["conv.weight"].shape[0] in dims and tensors["fc.weight"].shape[1] in dims
        rng = np.random.default_rng(0)
        for _ in range(50):
            data, _ = fz.mutate(blob, offsets, rng)
            assert zlib.crc32(data[:-4]) & 0xFFFFFFFF == struct.unpack("<I", data[-4:])[0]


def _huge_shared(shape: tuple[int, ...], n: int = 4000) -> bytes:
    """A well-formed ~7 KB SHARED section claiming ``shape``, its entries in the first 2^20 elements."""
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(1 << 20, size=n, replace=False))
    sh = Shared(shape, np.linspace(-1, 1, 16, dtype=np.float32), pos, rng.integers(0, 16, n), index_bits=8)
    return section(SHARED, "w", container.shared_payload(sh))


def test_a_7kb_file_claiming_a_32768_squared_tensor_is_refused_in_milliseconds():
    data = _file(section(META, "meta", b"{}"), _huge_shared((32768, 32768)))
    assert 5000 < len(data) < 9000
    msg, secs, peak = _refused(data)
    assert "too large" in msg and "(32768, 32768)" in msg and "\n" not in msg
    assert secs < 0.5 and peak < 1 << 20  # nothing of the claimed size (4 GiB as float32) allocated
    with pytest.raises(ContainerError, match="too large"):
        parse_container(data, expected=nn.ParameterDict({"w": nn.Parameter(torch.zeros(32768, 32768, device="meta"))}))


def test_a_file_at_the_element_limit_costs_nothing_until_checked_against_the_model(tmp_path):
    """16384^2 = MAX_NUMEL elements: without a model the file is read (its entries, not its zeros); given
    the model, or loaded into one, the shape is compared first and nothing of 1 GiB is allocated."""
    assert container.MAX_NUMEL == 16384 * 16384
    data = _file(_huge_shared((16384, 16384)))
    t = time.perf_counter()
    _, tensors = parse_container(data)
    secs = time.perf_counter() - t  # decoding 4,000 entries: ~30 ms (generous bound: shared machines)
    tracemalloc.start()
    parse_container(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tensors["w"].shape == (16384, 16384) and len(tensors["w"].positions) == 4000
    assert secs < 2 and peak < 4 << 20
    model = nn.Linear(64, 3, bias=False)
    model.register_parameter("w", model.weight)
    del model.weight
    msg, secs, peak = _refused(data, expected=model)
    assert "section 'w'" in msg and "(16384, 16384)" in msg and "the model wants (3, 64)" in msg
    assert secs < 0.5 and peak < 4 << 20
    tracemalloc.start()
    with pytest.raises(ContainerError, match="the model wants"):
        load_into(model, tensors)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


def test_raw_sections_must_hold_exactly_numel_times_itemsize_bytes():
    payload = struct.pack("<BBII", 0, 2, 32768, 32768) + bytes(7000)
    msg, secs, _ = _refused(_file(section(RAW, "w", payload)))
    assert "too large" in msg and secs < 0.5
    payload = struct.pack("<BBII", 0, 2, 4096, 4096) + bytes(7000)
    msg, secs, peak = _refused(_file(section(RAW, "w", payload)))
    assert "needs 67108864 bytes, the section holds 7000" in msg and secs < 0.5 and peak < 1 << 20
    extra = struct.pack("<BBI", 0, 1, 3) + bytes(13)  # 3 float32 and one byte too many
    assert "needs 12 bytes, the section holds 13" in _refused(_file(section(RAW, "b", extra)))[0]


def _shared_offsets(k: int, index_bits: int) -> tuple[int, int]:
    """Offsets of a 1-d SHARED payload's index bits and stream lengths (see the format)."""
    at_bits = 2 + 4 + 2 + 4 * k  # dtype, ndim, dim | k | codebook
    return at_bits, at_bits + 5 + (k + 1) + (1 << index_bits)


def test_shared_claims_are_bounded_by_the_payload():
    good = container.shared_payload(Shared((100,), np.array([0.5, -0.5], np.float32), np.array([3, 50]),
                                           np.array([0, 1]), index_bits=4))
    assert parse_container(_file(section(SHARED, "w", good)))[1]["w"].positions.tolist() == [3, 50]
    at_bits, at_streams = _shared_offsets(2, 4)

    def tampered(payload: bytes, at: int, fmt: str, value: int) -> bytes:
        size = struct.calcsize(fmt)
        return _file(section(SHARED, "w", payload[:at] + struct.pack(fmt, value) + payload[at + size:]))

    assert "101 entries for 100 elements" in _refused(tampered(good, at_bits + 1, "<I", 101))[0]
    big = container.shared_payload(Shared((10**6,), np.array([0.5], np.float32), np.array([0]), np.array([0]), 4))
    msg = _refused(tampered(big, _shared_offsets(1, 4)[0] + 1, "<I", 900_000))[0]
    assert "900000 entries cannot fit" in msg
    assert "index bits 17 out of range" in _refused(tampered(good, at_bits, "<B", 17))[0]
    assert "index bits 0 out of range" in _refused(tampered(good, at_bits, "<B", 0))[0]
    sym_bits, gap_bits = struct.unpack_from("<II", good, at_streams)
    assert len(good) == at_streams + 8 + (sym_bits + 7) // 8 + (gap_bits + 7) // 8
    assert "do not fill" in _refused(tampered(good, at_streams, "<I", sym_bits + 8))[0]
    assert "do not fill" in _refused(tampered(good, at_streams + 4, "<I", 2**32 - 1))[0]
    entries = struct.unpack_from("<I", good, at_bits + 1)[0]
    # a stream with fewer bits than entries cannot hold them (at least one bit per code word)
    few = good[:at_bits + 1] + struct.pack("<I", entries) + good[at_bits + 5:at_streams] + \
        struct.pack("<II", 1, gap_bits) + bytes([good[at_streams + 8]]) + good[at_streams + 8 + (sym_bits + 7) // 8:]
    assert f"{entries} entries in streams of 1 and {gap_bits} bits" in _refused(_file(section(SHARED, "w", few)))[0]


def test_deep_or_large_meta_is_refused_without_recursion():
    for meta in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 33 + b"1" + b"}" * 33, b"[" * 60000):
        msg = _refused(_file(section(META, "meta", meta)))[0]
        assert "nests deeper than 32" in msg
    msg = _refused(_file(section(META, "meta", b"[" * 10**6)))[0]
    assert "META of 1000000 bytes" in msg
    ok = json.dumps({"a": json.loads("[" * 31 + "]" * 31), "s": "[" * 5000 + '\\"{'}).encode()
    meta = parse_container(_file(section(META, "meta", ok)))[0]  # brackets inside strings do not count
    assert meta["s"].startswith("[[[") and meta["s"].endswith('"{')


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_values_are_refused_everywhere(tmp_path, dtype):
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.tensor([1.0, bad, 2.0]).to(dtype)
        with pytest.raises(ContainerError, match="NaN or infinite"):
            write_container(tmp_path / "x.edc", {"b": t})  # the writer does not write what the reader refuses
        raw = container.raw_payload(torch.tensor([1.0, 3.0, 2.0]).to(dtype))
        size = torch.tensor([], dtype=dtype).element_size()
        value = t[1:2].view(torch.int16).numpy().tobytes() if dtype == torch.bfloat16 else t[1:2].numpy().tobytes()
        raw = raw[:-2 * size] + value + raw[-size:]
        assert "NaN or infinite" in _refused(_file(section(RAW, "b", raw)))[0]
    good = container.shared_payload(Shared((10,), np.array([0.5, -0.5], np.float32), np.array([3]), np.array([0]), 2))
    cb = 2 + 4 + 2  # dtype, ndim, dim | k
    bad = good[:cb] + struct.pack("<f", float("inf")) + good[cb + 4:]
    assert "codebook holds NaN" in _refused(_file(section(SHARED, "w", bad)))[0]


def test_expected_shapes_names_and_meta_dependent_models(tmp_path):
    m = nn.Sequential(nn.Linear(4, 3))
    write_container(tmp_path / "m.edc", dict(m.state_dict()), {"fold": True})
    _, tensors = read_container(tmp_path / "m.edc", expected=m)
    assert set(tensors) == {"0.weight", "0.bias"}
    seen = []
    read_container(tmp_path / "m.edc", expected=lambda meta: seen.append(meta) or {"0.weight": (3, 4), "0.bias": [3]})
    assert seen == [{"fold": True}]  # called once, with the META that precedes the tensors
    wants = r"section '0.weight': shape \(3, 4\) torch.float32, the model wants \(3, 5\)"
    with pytest.raises(ContainerError, match=wants):
        read_container(tmp_path / "m.edc", expected=nn.Sequential(nn.Linear(5, 3)))
    with pytest.raises(ContainerError, match="section '0.weight': the model has no such tensor"):
        read_container(tmp_path / "m.edc", expected={"1.weight": (3, 4)})
    with pytest.raises(ContainerError, match=r"missing: \['0.extra'\]"):
        read_container(tmp_path / "m.edc", expected={**dict(m.state_dict()), "0.extra": torch.zeros(1)})
    with pytest.raises(ContainerError, match="the model wants"):
        read_container(tmp_path / "m.edc", expected={"0.weight": torch.zeros(3, 4, dtype=torch.float64),
                                                     "0.bias": (3,)})

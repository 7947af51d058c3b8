import copy
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import effdnn
from effdnn.compress.container import (ContainerError, Shared, absolute_positions, load_into, parse_container,
                                       read_container, relative_entries, write_container)
from effdnn.compress.deep_compression import DeepCompressionConfig, encode_model, load_compressed
from effdnn.errors import EffdnnError


def test_relative_indices_with_filler_zeros():
    # Han et al. 2016, Figure 3 style: 3-bit gaps (at most 7 zeros between entries)
    positions = np.array([1, 4, 15, 16, 40])
    codes = np.array([0, 1, 2, 3, 4])
    gaps, syms = relative_entries(positions, codes, index_bits=3, filler=9)
    # 15 is 10 zeros after 4: a filler at 12 (gap 7) then gap 2; 40 is 23 zeros after 16: fillers at 24, 32, gap 7
    assert gaps.tolist() == [1, 2, 7, 2, 0, 7, 7, 7]
    assert syms.tolist() == [0, 1, 9, 2, 3, 9, 9, 4]
    pos, cd = absolute_positions(gaps, syms, filler=9)
    assert pos.tolist() == positions.tolist() and cd.tolist() == codes.tolist()


@given(st.lists(st.integers(0, 3000), min_size=0, max_size=200, unique=True), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_relative_indices_round_trip(pos, bits):
    positions = np.array(sorted(pos), dtype=np.int64)
    codes = np.arange(len(positions)) % 5
    gaps, syms = relative_entries(positions, codes, bits, filler=5)
    assert gaps.max(initial=0) < 2 ** bits
    p, c = absolute_positions(gaps, syms, filler=5)
    assert p.tolist() == positions.tolist() and c.tolist() == codes.tolist()


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _pruned_small():
    torch.manual_seed(0)
    m = Small().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
    return effdnn.prune(m, {"method": "magnitude", "sparsity": 0.8, "scope": "layer"})


@pytest.mark.parametrize("huffman", [True, False])
def test_deep_compression_round_trip_is_exact(tmp_path, huffman):
    m = _pruned_small()
    cfg = DeepCompressionConfig(bits=3, index_bits=3, huffman=huffman)
    decoded, details = encode_model(copy.deepcopy(m), cfg, tmp_path / "m.edc")
    # the weights are the k-means-shared pruned weights: at most 8 distinct non-zeros, same zeros
    for name in ("conv", "fc"):
        w = getattr(decoded, name).weight
        assert torch.equal(w == 0, getattr(m, name).weight == 0)
        assert len(torch.unique(w[w != 0])) <= 8
    fresh = Small()
    load_compressed(tmp_path / "m.edc", fresh)
    for (k, a), (_, b) in zip(decoded.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    # the cost model's size is the file size, byte for byte
    x = torch.randn(2, 1, 6, 6)
    assert effdnn.cost(decoded, x).size_bytes == (tmp_path / "m.edc").stat().st_size
    assert torch.allclose(decoded(x), fresh.eval()(x))


def test_deep_compression_folds_batchnorm_into_the_file(tmp_path):
    m = _pruned_small()
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 2)
        m.bn.bias.uniform_(-1, 1)
    # 6 bits hold the 7 non-zeros of conv and the 39 of fc exactly: the only change is the folding
    encode_model(copy.deepcopy(m), DeepCompressionConfig(bits=6, index_bits=4), tmp_path / "p.edc")
    cfg = DeepCompressionConfig(bits=6, index_bits=4, fold_bn=True)
    decoded, _ = encode_model(copy.deepcopy(m), cfg, tmp_path / "f.edc")
    assert isinstance(decoded.bn, nn.Identity) and decoded.conv.bias is not None
    assert torch.equal(decoded.conv.weight == 0, m.conv.weight == 0)  # folding keeps the zeros
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(decoded(x), m(x), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "f.edc").stat().st_size < (tmp_path / "p.edc").stat().st_size
    fresh = Small()  # a fresh architecture is folded before it is filled
    load_compressed(tmp_path / "f.edc", fresh)
    assert isinstance(fresh.bn, nn.Identity)
    torch.testing.assert_close(fresh.eval()(x), decoded(x), rtol=0, atol=0)
    assert effdnn.cost(decoded, x).size_bytes == (tmp_path / "f.edc").stat().st_size


def test_already_shared_weights_are_kept_exactly(tmp_path):
    t = torch.tensor([[0.0, 0.25, -1.5, 0.0], [0.25, 0.0, 0.0, 3.0]])
    write_container(tmp_path / "a.edc", {"w": Shared((2, 4), np.array([-1.5, 0.25, 3.0], np.float32),
                                                       np.array([1, 2, 4, 7]), np.array([1, 0, 1, 2]), 2)})
    _, back = read_container(tmp_path / "a.edc")
    assert torch.equal(back["w"].dense(), t)


def test_raw_dtypes_round_trip(tmp_path):
    tensors = {"f32": torch.randn(3, 2), "f16": torch.randn(4).half(), "bf16": torch.randn(2).bfloat16(),
               "i64": torch.tensor(7), "b": torch.tensor([True, False]), "i8": torch.tensor([-3, 4], dtype=torch.int8)}
    write_container(tmp_path / "r.edc", tensors, {"note": "x"})
    meta, back = read_container(tmp_path / "r.edc")
    assert meta == {"note": "x"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def _blob(tmp_path):
    m = _pruned_small()
    encode_model(m, DeepCompressionConfig(bits=2, index_bits=2), tmp_path / "s.edc")
    return (tmp_path / "s.edc").read_bytes()


def _refresh_crc(b: bytes) -> bytes:
    return b[:-4] + struct.pack("<I", zlib.crc32(b[:-4]) & 0xFFFFFFFF)


def test_truncated_altered_and_foreign_files_are_one_line_errors(tmp_path):
    blob = _blob(tmp_path)
    cases = {"trunc": blob[: len(blob) // 2], "empty": b"", "flip": blob[:40] + bytes([blob[40] ^ 1]) + blob[41:],
             "magic": b"PK\x03\x04" + blob[4:], "version": _refresh_crc(blob[:4] + b"\x09\x00" + blob[6:])}
    msgs = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ContainerError) as e:
            read_container(tmp_path / name)
        assert "\n" not in str(e.value)
        msgs[name] = str(e.value)
    assert "checksum" in msgs["flip"] and "magic" in msgs["magic"] and "version 9" in msgs["version"]
    assert "truncated" in msgs["trunc"] and "truncated" in msgs["empty"]
    with pytest.raises(ContainerError, match="cannot read"):
        read_container(tmp_path / "missing.edc")
    with pytest.raises(ContainerError, match="the model has no such tensor"):
        load_compressed(tmp_path / "s.edc", nn.Sequential(nn.Linear(2, 2)))


def test_cli_reports_a_bad_container_with_exit_code_2(tmp_path):
    from effdnn.cli import main

    (tmp_path / "bad.edc").write_bytes(b"EFDC" + b"\x00" * 20)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ndata: {name: digits}\nmodel: {name: lenet5}\nbaseline: {epochs: 0}\nexperiments:\n"
                      "  - {name: p, prune: {method: magnitude, sparsity: 1.5}}\n")
    with pytest.raises(SystemExit) as e:
        main(["run", str(recipe), "--out", str(tmp_path / "out")])
    assert e.value.code == 2


# -- fuzzing: >= 10,000 mutated files, only ContainerError may come out --------------------------

_BLOB: list[bytes] = []


def _seed(tmp_path_factory) -> bytes:
    if not _BLOB:
        _BLOB.append(_blob(tmp_path_factory.mktemp("fuzz")))
    return _BLOB[0]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.integers(0, 0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
)


def _mutate(blob: bytes, muts: list) -> bytes:
    b = bytearray(blob)
    for kind, at, v in muts:
        i = at % max(len(b), 1)
        if kind == "flip" and b:
            b[i] ^= 1 << v
        elif kind == "set" and b:
            b[i] = v
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b.insert(i, v)
        elif kind == "delete":
            del b[i:i + v]
    return bytes(b)


_MODEL = Small().eval()


def _parse(data: bytes) -> None:
    """Read alone (shared tensors not expanded), then against the model and into it, as load_compressed."""
    try:
        parse_container(data)
        _, tensors = parse_container(data, expected=_MODEL)
        load_into(_MODEL, tensors)
    except ContainerError as e:
        assert "\n" not in str(e)


FILES_PER_EXAMPLE = 10


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(muts=st.lists(mutation, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_fuzz_container_reader(tmp_path_factory, muts, seed):
    """1,000 examples x 10 mutated files = 10,000 files: the Hypothesis-drawn mutation as it is and with
    its checksum recomputed (so the parser behind the checksum is exercised), and 8 more random byte
    mutations derived from the example's seed, checksum recomputed for 6 of them."""
    blob = _seed(tmp_path_factory)
    data = _mutate(blob, muts)
    files = [data, _refresh_crc(data) if len(data) >= 4 else data + bytes(16)]
    rng = np.random.default_rng(seed)
    for j in range(FILES_PER_EXAMPLE - 2):
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        files.append(_refresh_crc(bytes(b)) if j < 6 else bytes(b))
    assert len(files) == FILES_PER_EXAMPLE
    for f in files:
        _parse(f)


def test_auto_index_bits_picks_each_layers_smallest_section(tmp_path):
    from dataclasses import replace

    from effdnn.compress.container import shared_payload
    from effdnn.compress.deep_compression import AUTO_INDEX_BITS, smallest_index_bits

    rng = np.random.default_rng(0)
    for density in (0.5, 0.05, 0.005):  # short gaps want narrow indices, long ones wide indices
        positions = np.sort(rng.choice(20000, size=int(20000 * density), replace=False))
        sh = Shared((20000,), np.linspace(-1, 1, 8, dtype=np.float32), positions, rng.integers(0, 8, len(positions)), 5)
        best = smallest_index_bits(sh)
        sizes = {b: len(shared_payload(replace(sh, index_bits=b))) for b in AUTO_INDEX_BITS}
        assert len(shared_payload(best)) == min(sizes.values()) and best.index_bits in AUTO_INDEX_BITS
        assert np.array_equal(best.positions, sh.positions) and np.array_equal(best.codes, sh.codes)
    m = _pruned_small()
    fixed, _ = encode_model(copy.deepcopy(m), DeepCompressionConfig(bits=3, index_bits=3), tmp_path / "f.edc")
    auto, details = encode_model(copy.deepcopy(m), DeepCompressionConfig(bits=3, index_bits="auto"), tmp_path / "a.edc")
    assert (tmp_path / "a.edc").stat().st_size <= (tmp_path / "f.edc").stat().st_size
    for (k, a), b in zip(fixed.state_dict().items(), auto.state_dict().values()):
        assert torch.equal(a, b), k  # the same weights, only the index width differs
    assert all(1 <= d["index_bits"] <= 12 for d in details["layers"].values())

"""Fuzzing the Deep-Compression container reader: mutations of a real container (bit flips, byte
replacements, truncations, insertions, deletions, duplicated chunks, tampered size / shape / count
fields, hostile META), each with its CRC-32 trailer recomputed so that the parser behind the checksum
is exercised. Every read must either succeed or raise ContainerError (one line); anything else
(MemoryError, ValueError, IndexError, RecursionError, struct.error...) is counted as unhandled.
The process runs under a memory cap (RLIMIT_AS, ``--cap-mb`` above the starting size). Usage:

    python benchmarks/fuzz_container.py --mutations 100000 --seed 0 --cap-mb 200

tests/compress/test_container_fuzz.py runs the same mutations, fewer of them.
"""
from __future__ import annotations

import argparse
import copy
import resource
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import effdnn
from effdnn.compress.container import ContainerError, load_into, parse_container
from effdnn.compress.deep_compression import DeepCompressionConfig, encode_model


class Net(nn.Module):
    """Small, but with every kind of section: shared weights, float biases, BatchNorm buffers, an int64."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def sample_containers() -> tuple[list[bytes], nn.Module]:
    """Two real containers written by the writer (Huffman / fixed-width codes) and a model they fit."""
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
    m = effdnn.prune(m, {"method": "magnitude", "sparsity": 0.8, "scope": "layer"})
    blobs = []
    with tempfile.TemporaryDirectory() as d:
        for i, cfg in enumerate([DeepCompressionConfig(bits=3, index_bits=3),
                                 DeepCompressionConfig(bits=2, index_bits=4, huffman=False)]):
            encode_model(copy.deepcopy(m), cfg, Path(d) / f"{i}.edc", {"note": {"nested": [1, 2.5, "x"]}})
            blobs.append((Path(d) / f"{i}.edc").read_bytes())
    return blobs, Net().eval()


def fields(blob: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every count, length, dtype, shape and size field of a valid container."""
    out = [(8, "<I")]  # section count
    pos = 12
    for _ in range(struct.unpack_from("<I", blob, 8)[0]):
        kind, nlen = struct.unpack_from("<BH", blob, pos)
        out += [(pos, "<B"), (pos + 1, "<H"), (pos + 3 + nlen, "<Q")]
        p = pos + 3 + nlen + 8
        end = p + struct.unpack_from("<Q", blob, pos + 3 + nlen)[0]
        if kind in (1, 2):
            ndim = blob[p + 1]
            out += [(p, "<B"), (p + 1, "<B")] + [(p + 2 + 4 * j, "<I") for j in range(ndim)]
            p += 2 + 4 * ndim
        if kind == 2:
            k = struct.unpack_from("<H", blob, p)[0]
            q = p + 2 + 4 * k
            index_bits = blob[q]
            out += [(p, "<H"), (q, "<B"), (q + 1, "<I")]
            out += [(q + 5 + j, "<B") for j in range(k + 1 + (1 << index_bits))]  # code lengths
            s = q + 5 + k + 1 + (1 << index_bits)
            out += [(s, "<I"), (s + 4, "<I")]
        pos = end
    return out


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def _interesting(v: int, bits: int, rng: np.random.Generator) -> int:
    top = (1 << bits) - 1
    pick = [0, 1, 2, v - 1, v + 1, 2 * v, v // 2, top, top - 1, 1 << (bits - 1), 1 << 15, 1 << 16, 1 << 28,
            (1 << 28) + 1, 32768, 16384, int.from_bytes(rng.bytes(bits // 8), "little")]
    return pick[int(rng.integers(len(pick)))] & top


def _hostile_meta(rng: np.random.Generator) -> bytes:
    depth = int(rng.choice([10, 33, 1000, 100000]))
    kind = int(rng.integers(6))
    if kind == 0:
        return b"[" * depth + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 2:
        return b"[" * depth  # unterminated
    if kind == 3:
        return b'{"x": "' + b"\\\"[" * depth + b'"}'  # brackets inside a string
    if kind == 4:
        return b'{"n": ' + b"9" * depth + b"}"
    return b'{"v": [NaN, Infinity, 1e999]}'


def _set_meta(body: bytes, meta: bytes) -> bytes:
    nlen = struct.unpack_from("<H", body, 13)[0]  # the writer puts META first
    at = 16 + nlen
    old = struct.unpack_from("<Q", body, at)[0]
    return body[:at] + struct.pack("<Q", len(meta)) + meta + body[at + 8 + old:]


def mutate(blob: bytes, offsets: list[tuple[int, str]], rng: np.random.Generator) -> tuple[bytes, str]:
    """A mutated copy of ``blob`` with its checksum recomputed, and the names of the mutations made."""
    body = bytearray(blob[:-4])
    ops = []
    if rng.random() < 0.35:  # tamper with a size / shape / count field (offsets of the unmutated file)
        for _ in range(int(rng.integers(1, 3))):
            at, fmt = offsets[int(rng.integers(len(offsets)))]
            bits = 8 * struct.calcsize(fmt)
            struct.pack_into(fmt, body, at, _interesting(struct.unpack_from(fmt, body, at)[0], bits, rng))
            ops.append("field")
    elif rng.random() < 0.05:
        body = bytearray(_set_meta(bytes(body), _hostile_meta(rng)))
        ops.append("meta")
    for _ in range(int(rng.integers(0 if ops else 1, 4))):
        op = ["flip", "set", "cut", "insert", "delete", "dup"][int(rng.integers(6))]
        i = int(rng.integers(len(body))) if body else 0
        if op == "flip" and body:
            body[i] ^= 1 << int(rng.integers(8))
        elif op == "set" and body:
            body[i] = int(rng.integers(256))
        elif op == "cut":
            del body[i:]
        elif op == "insert":
            body[i:i] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        elif op == "delete":
            del body[i:i + int(rng.integers(1, 17))]
        elif op == "dup":
            body[i:i] = body[i:i + int(rng.integers(1, 65))]
        ops.append(op)
    return with_crc(bytes(body)), "+".join(ops)


def read_once(data: bytes, model: nn.Module) -> str | None:
    """None if the file is accepted (read alone, then read and loaded into ``model``); the message of
    the ContainerError that refused it otherwise. Anything else propagates."""
    try:
        parse_container(data, "fuzz")  # without the model: the shared tensors are not expanded
        _, tensors = parse_container(data, "fuzz", expected=model)
        load_into(model, tensors, "fuzz")
    except ContainerError as e:
        return str(e)
    return None


@dataclass
class Stats:
    mutations: int = 0
    accepted: int = 0
    refused: int = 0
    unhandled: int = 0
    multiline: int = 0
    slowest_ms: float = 0.0
    errors: Counter = field(default_factory=Counter)  # ContainerError messages, numbers removed
    failures: list = field(default_factory=list)  # (ops, exception line) of the first unhandled ones


def run(n: int, seed: int = 0, progress: int = 0) -> Stats:
    blobs, model = sample_containers()
    offsets = [fields(b) for b in blobs]
    rng = np.random.default_rng(seed)
    st = Stats()
    t0 = time.perf_counter()
    for i in range(n):
        j = i % len(blobs)
        data, ops = mutate(blobs[j], offsets[j], rng)
        t = time.perf_counter()
        try:
            msg = read_once(data, model)
        except Exception as e:  # noqa: BLE001 - counting exactly these is the point
            st.unhandled += 1
            if len(st.failures) < 10:
                st.failures.append((i, ops, traceback.format_exception_only(type(e), e)[-1].strip()))
            msg = ""
        st.slowest_ms = max(st.slowest_ms, 1000 * (time.perf_counter() - t))
        st.mutations += 1
        if msg is None:
            st.accepted += 1
        elif msg:
            st.refused += 1
            st.multiline += "\n" in msg or len(msg.splitlines()) != 1
            st.errors[" ".join(w for w in msg.split() if not any(c.isdigit() for c in w))[:60]] += 1
        if progress and (i + 1) % progress == 0:
            print(f"  {i + 1} mutations, {st.refused} refused, {st.unhandled} unhandled, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return st


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap-mb", type=int, default=200, help="address space allowed above the starting size")
    args = ap.parse_args()
    print(f"command: python benchmarks/fuzz_container.py --mutations {args.mutations} --seed {args.seed} "
          f"--cap-mb {args.cap_mb}")
    torch.set_num_threads(1)
    sample_containers()  # warm up (imports, the pruning) before the cap is measured
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cap = _vm_bytes() + args.cap_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    st = run(args.mutations, args.seed, progress=10_000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mutations {st.mutations}  accepted {st.accepted}  refused {st.refused}  unhandled {st.unhandled}  "
          f"multi-line errors {st.multiline}")
    print(f"peak memory {peak:.0f} MB (RSS; {base_rss:.0f} MB before fuzzing; address-space cap {cap / 2**20:.0f} MB)  "
          f"slowest read {st.slowest_ms:.1f} ms  total {time.perf_counter() - t0:.0f} s")
    print(f"{len(st.errors)} distinct refusals; most common:")
    for msg, c in st.errors.most_common(8):
        print(f"  {c:6d}  {msg}")
    for i, ops, line in st.failures:
        print(f"UNHANDLED mutation {i} ({ops}): {line}")
    sys.exit(1 if st.unhandled or st.multiline else 0)


if __name__ == "__main__":
    main()

"""What this CPU's int8 kernels can compute exactly.

x86 int8 GEMM / convolution kernels (fbgemm, oneDNN, onnxruntime's MLAS) multiply uint8 activations by
int8 weights. With VNNI (``vpdpbusd``: AVX512-VNNI, AVX-VNNI, or AMX-INT8) four products go straight
into an int32 accumulator. Without it (AVX2, or AVX-512 without VNNI) they use ``vpmaddubsw``, which
adds each pair of adjacent products in **saturating int16**: a0 * w0 + a1 * w1 is exact only while
|a0 * w0 + a1 * w1| <= 32767, i.e. for every pair when 2 * max(a) * max|w| <= 32767 (8-bit codes:
2 * 255 * 128 = 65280 overflow; 7-bit activations 2 * 127 * 128 = 32512 or 7-bit weights
2 * 255 * 64 = 32640 fit). Intel's optimization manual, "vpmaddubsw"; oneDNN's "int8 computations"
notes; torch.ao's and onnxruntime's ``reduce_range`` answer the same overflow.
"""
from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
INT16_MAX = 32767


def cpu_flags() -> set[str] | None:
    """The feature flags of this CPU from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), None)
    return set(line.split(":", 1)[1].split()) if line else None


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def has_vnni() -> bool:
    """Whether this x86 CPU has an int8 dot product into int32 (VNNI / AMX-INT8). Unknown flags (no
    /proc/cpuinfo) count as no VNNI: the reduced range is exact on every CPU, the full one is not."""
    flags = cpu_flags()
    return flags is not None and bool(VNNI_FLAGS & flags)


def int8_pairs_saturate() -> bool:
    """Whether this CPU's u8 x s8 int8 kernels add product pairs in saturating int16 (x86 without VNNI).
    ARM kernels (qnnpack, KleidiAI) widen to int32 before adding."""
    return is_x86() and not has_vnni()


def pair_sum_fits(act_max: int, weight_absmax: int) -> bool:
    """Whether any pair a0 * w0 + a1 * w1 with 0 <= a <= act_max (uint8 codes, zero point included) and
    |w| <= weight_absmax fits int16: the exactness condition of ``vpmaddubsw`` (module doc)."""
    return 2 * act_max * weight_absmax <= INT16_MAX


__all__ = ["INT16_MAX", "VNNI_FLAGS", "cpu_flags", "has_vnni", "int8_pairs_saturate", "is_x86", "pair_sum_fits"]

"""Fast CPU kernels, compiled at first use and cached: bit-packed binary layers (``lib()``) and fused
fake quantization for QAT (``fq_lib()``, ``fake_quant_kernels.cpp``, compiled with
``-ffp-contract=off`` so it evaluates its references' float32 expressions bit for bit).

``binary_kernels.cpp`` (XNOR-popcount GEMM and convolution, XNOR-Net, Rastegari et al. 2016: for +-1
vectors with bit 1 = +1, a . b = K - 2 popcount(a xor b)) is compiled once per machine with the system
C++ compiler (``$CXX``, else g++ / c++): ``-O3 -march=native -fopenmp -shared``, into
``$EFFDNN_CACHE/kernels`` (default ``~/.cache/effdnn/kernels``), keyed by the source, the flags, the
compiler and the CPU; then loaded with ctypes (no torch headers, no ninja: the build takes ~2 s).
popcount: AVX-512 VPOPCNTDQ when the CPU has it, else AVX2 nibble lookup (vpshufb), else scalar.

When no compiler works (or ``EFFDNN_NO_KERNELS=1``), ``lib()`` returns None after one warning line, and
the packed layers use the numpy reference path (``bitpack.xnor_popcount_matmul``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).with_name("binary_kernels.cpp")
FQ_SOURCE = Path(__file__).with_name("fake_quant_kernels.cpp")
FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3", "-fopenmp"], ["-O3"])
ISA_NAMES = {1: "scalar popcount", 2: "AVX2 vpshufb popcount", 3: "AVX-512 VPOPCNTDQ"}
_state: dict = {}


def cache_dir() -> Path:
    return Path(os.environ.get("EFFDNN_CACHE", Path.home() / ".cache" / "effdnn")) / "kernels"


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [l for l in text.splitlines() if l.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _build(cxx: str, source: Path = SOURCE, extra: tuple[str, ...] = ()) -> Path:
    src = source.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    errors = []
    for base in FLAG_SETS:
        flags = [*base, *extra]
        key = hashlib.sha256(src + repr(flags).encode() + version.encode() + _cpu_key().encode()).hexdigest()[:16]
        out = cache_dir() / f"{source.stem}_{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tmp_so = Path(tmp) / out.name
            r = subprocess.run([cxx, *flags, "-shared", "-fPIC", "-std=c++17", str(source), "-o", str(tmp_so)],
                               capture_output=True, text=True, check=False)
            if r.returncode == 0:
                os.replace(tmp_so, out)  # atomic: concurrent builders all end with one whole file
                return out
            errors.append(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    raise RuntimeError("; ".join(errors))


def _declare(so: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int
    so.effdnn_kernel_isa.restype = c_int
    so.effdnn_pack_rows.argtypes = [p, i64, i64, p, p, p, i64, p, c_int]
    so.effdnn_xnor_gemm.argtypes = [p, i64, p, i64, i64, i32, p, c_int]
    so.effdnn_xnor_conv2d.argtypes = [p, p, c_int]
    for f in (so.effdnn_pack_rows, so.effdnn_xnor_gemm, so.effdnn_xnor_conv2d):
        f.restype = None
    return so


def _load(key: str, source: Path, declare: Callable[[ctypes.CDLL], ctypes.CDLL], flags: tuple[str, ...],
          what: str, fallback: str) -> ctypes.CDLL | None:
    """Build (once, cached) and load one kernel library; None after one warning line naming the fallback."""
    if key in _state:
        return _state[key]
    so, why = None, ""
    if os.environ.get("EFFDNN_NO_KERNELS", "") not in ("", "0"):
        why = "EFFDNN_NO_KERNELS is set"
    elif (cxx := _compiler()) is None:
        why = "no C++ compiler found ($CXX, g++, c++, clang++)"
    else:
        try:
            so = declare(ctypes.CDLL(str(_build(cxx, source, flags))))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            why = f"build failed: {e}"
    if so is None:
        warnings.warn(f"effdnn: {what} unavailable ({why}); {fallback}", RuntimeWarning, stacklevel=3)
    _state[key] = so
    return so


def lib() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first call; None (after one warning line) when unavailable."""
    return _load("lib", SOURCE, _declare, (),
                 "fast binary kernels", "packed layers use the numpy reference path")


def _declare_fq(so: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    so.effdnn_fq_affine.argtypes = [p, i64, i64, p, p, f32, f32, p, p, c_int]
    so.effdnn_fq_mask_grad.argtypes = [p, p, i64, c_int, p, c_int]
    so.effdnn_lsq_fwd.argtypes = [p, i64, i64, p, f32, f32, f32, p, p, c_int]
    so.effdnn_lsq_bwd.argtypes = [p, p, i64, i64, p, f32, f32, f32, p, p, c_int]
    so.effdnn_pact_fwd.argtypes = [p, i64, f32, c_int, c_int, p, p, c_int]
    so.effdnn_pact_bwd.argtypes = [p, p, i64, c_int, p, p, c_int]
    for f in (so.effdnn_fq_affine, so.effdnn_fq_mask_grad, so.effdnn_lsq_fwd, so.effdnn_lsq_bwd,
              so.effdnn_pact_fwd, so.effdnn_pact_bwd):
        f.restype = None
    return so


def fq_lib() -> ctypes.CDLL | None:
    """The fused fake-quant kernels, built on first call; None (after one warning line) when unavailable,
    and QAT then runs its reference autograd path (same values, more passes)."""
    # IEEE float32 op by op: no FMA contraction; errno / trap flags only (values unchanged)
    return _load("fq", FQ_SOURCE, _declare_fq, ("-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"),
                 "fused fake-quant kernels", "QAT uses the reference autograd path")


def isa() -> str:
    """Which popcount the loaded kernels use ("numpy reference" when none are loaded)."""
    so = lib()
    return "numpy reference" if so is None else ISA_NAMES.get(so.effdnn_kernel_isa(), "?")


__all__ = ["cache_dir", "fq_lib", "isa", "lib"]

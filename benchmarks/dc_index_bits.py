"""Relative-index widths of a Deep-Compression file: each shared section re-encoded at every width of
``index_bits: auto`` (1-12 bits), the file's own width against the smallest, and the file size and
compression ratio the file would have with ``auto``. The weights are the file's; only the index
width changes. Usage:

    python benchmarks/dc_index_bits.py runs/r20-lamp95/experiments/dc-95-lamp-kd-20ep-s100/model.edc --fp32-bytes 1095016
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from effdnn.compress.container import Shared, read_container, shared_payload
from effdnn.compress.deep_compression import smallest_index_bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--fp32-bytes", type=int, required=True,
                    help="the FP32 model's size (report.json: baseline.size_bytes)")
    args = ap.parse_args()
    print(f"command: python benchmarks/dc_index_bits.py {' '.join(sys.argv[1:])}")
    _, tensors = read_container(args.file)
    size = args.file.stat().st_size
    saved = 0
    print("| layer | non-zeros | width in the file | bytes | auto width | bytes |\n|---|---:|---:|---:|---:|---:|")
    for name, t in tensors.items():
        if isinstance(t, Shared):
            now, best = len(shared_payload(t)), smallest_index_bits(t)
            after = len(shared_payload(best))
            saved += now - after
            print(f"| {name} | {len(t.positions)} | {t.index_bits} | {now} | {best.index_bits} | {after} |")
    fp32 = args.fp32_bytes
    print(f"\nfile {size:,} B ({fp32 / size:.2f}x); with index_bits auto {size - saved:,} B ({fp32 / (size - saved):.2f}x)")


if __name__ == "__main__":
    main()

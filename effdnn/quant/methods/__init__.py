"""Quantization methods beyond PTQ, one small file each (binary / ternary: bc, bnn, bwn, xnor, twn, ttq)."""

"""Quantization methods with their own recipe key (``method:``), one module each; importing a module
registers its method (see ``effdnn/techniques.py``)."""
"""Quantization methods beyond PTQ, one small file each (binary / ternary: bc, bnn, bwn, xnor, twn, ttq)."""

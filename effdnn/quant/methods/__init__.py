"""Quantization methods with their own recipe key (``method:``), one small file each: QAT (pact, lsq,
dorefa) and binary / ternary nets (bc, bnn, bwn, xnor, twn, ttq). Importing a module registers its
method (see ``effdnn/techniques.py``)."""

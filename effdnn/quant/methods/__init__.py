"""Quantization methods with their own recipe key (``method:``), one module each; importing a module
registers its method (see ``effdnn/techniques.py``)."""

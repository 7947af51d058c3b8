"""Importing this module registers every technique in the method registries (effdnn.registry)."""
# Each technique package registers its methods on import; add new packages here.
from . import quant  # noqa: F401,E402  (ptq)
from .quant import qat  # noqa: F401,E402  (qat)
from .quant import gptq, smoothquant  # noqa: F401,E402  (gptq, smoothquant)
from .quant.methods import dorefa, lsq, pact  # noqa: F401,E402  (dorefa, lsq, pact)
from .lowp import precision_block  # noqa: F401  (precision: fp32, fp16, bf16, fp8, hfp8)
from .quant.methods import bc, bnn, bwn, ttq, twn, xnor  # noqa: F401,E402  (binary / ternary nets)
from . import prune  # noqa: E402,F401  (pruning, structured surgery, activation sparsity)
from . import compress  # noqa: E402,F401  (Deep-Compression container)

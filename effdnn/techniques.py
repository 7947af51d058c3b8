"""Importing this module registers every technique in the method registries (effdnn.registry)."""
# Each technique package registers its methods on import; add new packages here.
from . import prune  # noqa: E402,F401  (pruning, structured surgery, activation sparsity)
from . import compress  # noqa: E402,F401  (Deep-Compression container)

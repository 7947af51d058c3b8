"""Pruning: saliency (which weights / channels matter), schedules (how many, when), masks and
structured surgery (how they are removed), activation sparsity. Importing registers the methods."""
from . import activation, sparsegpt, structured, unstructured, wanda  # noqa: F401  (registers the methods)
from .masks import channel_keep, global_masks, nm_mask, topk_mask
from .saliency import channel_saliency, weight_saliency
from .rigl import rigl_drop_fraction, rigl_update
from .schedules import agp_sparsity, iterative_sparsity
from .sparse import MaskCallback, make_sparse, sparse_layers, strip_sparse

__all__ = ["MaskCallback", "agp_sparsity", "channel_keep", "channel_saliency", "global_masks", "iterative_sparsity",
           "make_sparse", "nm_mask", "rigl_drop_fraction", "rigl_update", "sparse_layers", "strip_sparse", "topk_mask",
           "weight_saliency"]

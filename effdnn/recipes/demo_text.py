"""The demo's text part: a small randomly initialised BERT (hidden 128, 2 layers, 4 heads; no pretrained
weights, nothing is downloaded) with a word-level WordPiece tokenizer over the vocabulary below, and
sentences made from it. Its rows show the text path (tokenization, cosine against the FP32 model)."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["the", "a", "one", "my", "our", "cat", "dog", "bird", "child", "farmer", "pilot", "river", "engine", "garden", "book", "storm", "song", "city", "sat", "ran", "flew", "read", "sang", "built", "found", "lost", "painted", "crossed", "near", "under", "over", "behind", "beside", "quickly", "slowly", "today", "yesterday", "again", "old", "new", "red", "green", "small", "large", "quiet", "bright"]


def tokenizer():
    from transformers import BertTokenizerFast

    vocab = Path(tempfile.mkdtemp(prefix="effdnn-demo-")) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def build(**_shape):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64,
                     initializer_range=0.1)  # wider than BERT's 0.02: the layers, not the embeddings, dominate
    return BertModel(cfg).eval()


def sentences(n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(5, 16))) for _ in range(n)]


def load() -> tuple[list[str], list[str]]:
    """(64 calibration sentences, 128 test sentences)."""
    return sentences(64, 1), sentences(128, 0)

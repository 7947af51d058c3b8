"""A tiny text task for recipe tests: a word-level BERT tokenizer built from a vocabulary file (nothing is
downloaded), a randomly initialised small BERT (or a sequence classifier), and sentences made from word
lists. ``write(folder)`` writes the recipe's model and data files there."""
from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "under", "near", "mat", "roof", "tree", "door", "quickly", "slowly", "today", "again", "red", "green", "big", "small", "old", "new", "happy", "sad", "river", "car", "book"]

MODEL_FILE = '''
import os, random
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = {words!r}

def tokenizer():
    from transformers import BertTokenizerFast
    vocab = Path(__file__).parent / "vocab.txt"
    vocab.write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\\n")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)

def _config(**kw):
    from transformers import BertConfig
    return BertConfig(vocab_size=len(WORDS) + 5, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=64, **kw)

def build(num_classes=0, **_):
    import torch
    from transformers import BertForSequenceClassification, BertModel
    torch.manual_seed(0)
    if num_classes:
        return BertForSequenceClassification(_config(num_labels=num_classes)).eval()
    return BertModel(_config()).eval()

def sentences(n, seed):
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(4, 12))) for _ in range(n)]

def text(n_train=32, n_test=24):
    return sentences(n_train, 1), sentences(n_test, 0)

def labelled(n_train=32, n_test=32):
    label = lambda s: int("cat" in s.split() or "dog" in s.split())
    tr, te = sentences(n_train, 1), sentences(n_test, 0)
    return [(s, label(s)) for s in tr], [(s, label(s)) for s in te]

def batches():
    import torch
    g = torch.Generator().manual_seed(0)
    out = []
    for length in (7, 11, 9):
        ids = torch.randint(5, len(WORDS) + 5, (4, length), generator=g)
        mask = torch.ones(4, length, dtype=torch.long)
        mask[0, length // 2:] = 0
        out.append({{"input_ids": ids, "attention_mask": mask}})
    return out, out[:2]

def needs_missing():
    import effdnn_no_such_package  # noqa: F401
'''


def write(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_text.py").write_text(MODEL_FILE.format(words=WORDS))
    return folder

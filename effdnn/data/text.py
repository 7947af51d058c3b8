"""Text data for recipes: sentences tokenized by the model's tokenizer, or batches already tokenized.

A user's ``data: {name: "file.py:fn"}`` may return, instead of image data sets:

- a list of sentences (``str``), or of ``(sentence, label)`` pairs; both splits are then that list;
- ``(train, test)`` (optionally ``(train, test, info)``) of such lists;
- lists of tokenized batches: dicts of tensors (``input_ids``, ``attention_mask``, ...; a ``labels``
  entry makes the set labelled).

Sentences are tokenized by the tokenizer the recipe names (``data.tokenizer``: ``"file.py:fn"`` or a
local tokenizer folder), else by the model file's ``tokenizer()``; each split is padded to its longest
sentence. Tokenized batches are padded with 0 (attention mask 0) to the split's longest batch. An
example is a dict of its token tensors; a labelled one is ``(dict, label)``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import EffdnnError
from ..utils.user_code import (
    call_user,
    is_user_ref,
    load_user_function,
    resolve_user_file,
)
from .bundle import DataBundle

LABEL_KEYS = ("labels", "label")


class TokenDataset(Dataset):
    """Examples of a tokenized split: item i is ``{key: column[i]}``, or ``(that dict, label)``."""

    def __init__(self, columns: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        self.columns, self.labels = columns, labels

    def __len__(self) -> int:
        return int(next(iter(self.columns.values())).shape[0])

    def __getitem__(self, i: int) -> Any:
        x = {k: v[i] for k, v in self.columns.items()}
        return x if self.labels is None else (x, self.labels[i])

    @property
    def seq_len(self) -> int:
        return int(next(iter(self.columns.values())).shape[-1])


def _is_text_item(item: Any) -> bool:
    return isinstance(item, (str, dict)) or (isinstance(item, (tuple, list)) and len(item) == 2
                                             and isinstance(item[0], str))


def is_text(out: Any) -> bool:
    """Whether a data function's result is text (sentences or tokenized batches) rather than data sets."""
    if isinstance(out, list):
        return bool(out) and _is_text_item(out[0])
    if isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], list):
        return bool(out[0]) and _is_text_item(out[0][0])
    return False


def resolve_tokenizer(ref: str | None, model_name: str, base_dir: str | Path | None) -> Callable[[], Any] | None:
    """The tokenizer loader: ``data.tokenizer`` (``"file.py:fn"`` or a local folder), else the model file's
    ``tokenizer()`` when the model is a user's ``"file.py:fn"`` that defines one; None when neither."""
    if ref is not None and is_user_ref(ref):
        fn = load_user_function(ref, base_dir)
        return lambda: call_user(ref, fn)
    if ref is not None:
        folder = resolve_user_file(str(Path(ref) / "tokenizer_config.json"), base_dir)
        if folder is None:
            raise EffdnnError(f"data.tokenizer: {ref!r} is neither 'file.py:fn' nor a folder holding tokenizer_config.json")
        return lambda: _auto_tokenizer(folder.parent)
    if is_user_ref(model_name):
        try:
            fn = load_user_function(model_name.rpartition(":")[0] + ":tokenizer", base_dir)
        except EffdnnError:
            return None
        return lambda: call_user(model_name.rpartition(":")[0] + ":tokenizer", fn)
    return None


def _auto_tokenizer(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise EffdnnError("data.tokenizer: a tokenizer folder needs the optional package 'transformers'") from None
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[-1])) if t.dim() >= 2 else t


def _from_batches(ref: str, split: str, batches: list[Any]) -> TokenDataset:
    if not all(isinstance(b, dict) and b and all(isinstance(v, torch.Tensor) for v in b.values()) for b in batches):
        raise EffdnnError(f"data {ref!r}: the {split} batches must all be dicts of tensors")
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise EffdnnError(f"data {ref!r}: the {split} batches do not all have the keys {sorted(keys)}")
    length = max(int(v.shape[-1]) for b in batches for k, v in b.items() if k not in LABEL_KEYS and v.dim() >= 2)
    cols = {k: torch.cat([_pad(b[k], length) for b in batches]) for k in keys if k not in LABEL_KEYS}
    label_key = next((k for k in LABEL_KEYS if k in keys), None)
    labels = torch.cat([b[label_key].reshape(-1) for b in batches]) if label_key else None
    return TokenDataset(cols, labels)


def _from_sentences(ref: str, split: str, items: list[Any], tokenizer: Any, max_length: int | None) -> TokenDataset:
    labelled = isinstance(items[0], (tuple, list))
    if not all(isinstance(s, (tuple, list)) == labelled for s in items):
        raise EffdnnError(f"data {ref!r}: the {split} split mixes sentences and (sentence, label) pairs")
    texts = [s[0] if labelled else s for s in items]
    if not all(isinstance(t, str) for t in texts):
        raise EffdnnError(f"data {ref!r}: the {split} split must hold sentences (str) or (sentence, label) pairs")
    try:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    except Exception as e:  # noqa: BLE001  (a user tokenizer may raise anything: one line)
        raise EffdnnError(f"data {ref!r}: the tokenizer failed on the {split} sentences: {type(e).__name__}: {e}") from None
    labels = torch.as_tensor([int(s[1]) for s in items]) if labelled else None
    return TokenDataset({k: v for k, v in dict(enc).items() if isinstance(v, torch.Tensor)}, labels)


def _split(ref: str, split: str, items: list[Any], tokenizer: Callable[[], Any] | None,
           max_length: int | None, cache: dict[str, Any]) -> TokenDataset:
    if not items:
        raise EffdnnError(f"data {ref!r}: the {split} split is empty")
    if isinstance(items[0], dict):
        return _from_batches(ref, split, items)
    if "tok" not in cache:
        if tokenizer is None:
            raise EffdnnError(f"data {ref!r}: sentences need a tokenizer: set data.tokenizer ('file.py:fn' or a "
                              "tokenizer folder) or define tokenizer() in the model file")
        cache["tok"] = tokenizer()
    return _from_sentences(ref, split, items, cache["tok"], max_length)


def text_bundle(ref: str, out: Any, tokenizer: Callable[[], Any] | None, max_length: int | None) -> DataBundle:
    """A data function's text result -> a :class:`DataBundle` of :class:`TokenDataset` splits."""
    info: dict[str, Any] = {}
    if isinstance(out, tuple) and len(out) == 3:
        if not isinstance(out[2], dict):
            raise EffdnnError(f"{ref}: the third item it returns must be a dict (info), got {type(out[2]).__name__}")
        out, info = out[:2], out[2]
    train_items, test_items = (out, out) if isinstance(out, list) else out
    if not isinstance(test_items, list):
        raise EffdnnError(f"{ref}: returns text: expected (train, test) lists, got a {type(test_items).__name__} test split")
    cache: dict[str, Any] = {}
    train = _split(ref, "train", train_items, tokenizer, max_length, cache)
    test = train if test_items is train_items else _split(ref, "test", test_items, tokenizer, max_length, cache)
    if (train.labels is None) != (test.labels is None):
        raise EffdnnError(f"data {ref!r}: one split has labels and the other has none")
    num_classes = 0
    if train.labels is not None:
        every = torch.cat([train.labels, test.labels])
        num_classes = int(info.get("num_classes") or int(every.max()) + 1)
        if int(every.min()) < 0 or int(every.max()) >= num_classes:
            raise EffdnnError(f"data {ref!r}: labels must lie in 0..{num_classes - 1}")
    return DataBundle(ref, train, test, 1, num_classes, (1, test.seq_len), text=True)

"""Fashion-MNIST (Xiao et al. 2017) from its original IDX files; nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import EffdnnError
from .bundle import DataBundle
from .idx import read_idx

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN, STD = 0.2860, 0.3530  # of the 60,000 training images in [0, 1]


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    raise EffdnnError(
        f"fashion-mnist: {stem}[.gz] not found in {root}; install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or set data.root to a folder with the four IDX files"
    )


def _images_labels(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_find(root, FILES[f"{split}_images"]))
    labels = read_idx(_find(root, FILES[f"{split}_labels"]))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise EffdnnError(f"fashion-mnist {split} images: expected uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise EffdnnError(f"fashion-mnist {split}: {len(images)} images but labels of shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise EffdnnError(f"fashion-mnist {split} labels: values must be 0..9, found {int(labels.max())}")
    return images, labels


def _dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return TensorDataset((x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64)))


def load(root: str | None = None, limit_train: int | None = None, limit_test: int | None = None) -> DataBundle:
    """The 60,000 / 10,000 split of the IDX files in ``root`` (default: Debian's folder)."""
    folder = Path(root or DEFAULT_ROOT)
    if not folder.is_dir():
        raise EffdnnError(
            f"fashion-mnist: folder {folder} not found; install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist) or set data.root to a folder with the four IDX files"
        )
    xtr, ytr = _images_labels(folder, "train")
    xte, yte = _images_labels(folder, "test")
    xtr, ytr, xte, yte = xtr[:limit_train], ytr[:limit_train], xte[:limit_test], yte[:limit_test]
    return DataBundle(
        "fashion-mnist", _dataset(xtr, ytr), _dataset(xte, yte), 1, 10, (int(xtr.shape[1]), int(xtr.shape[2]))
    )

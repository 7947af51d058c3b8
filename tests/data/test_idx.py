import gzip

import numpy as np
import pytest

from effdnn.data import read_idx, write_idx
from effdnn.data import fashion_mnist
from effdnn.errors import EffdnnError


def _hand_built(path, arr_bytes, dtype_code, shape):
    head = bytes([0, 0, dtype_code, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)
    path.write_bytes(head + arr_bytes)


def test_reads_hand_built_uint8_file(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    data = bytes(range(24))
    _hand_built(p, data, 0x08, (2, 3, 4))
    arr = read_idx(p)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8
    assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4


def test_reads_big_endian_int32_and_gzip(tmp_path):
    p = tmp_path / "y.gz"
    vals = np.array([1, -2, 70000], dtype=">i4")
    head = bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big")
    with gzip.open(p, "wb") as f:
        f.write(head + vals.tobytes())
    assert read_idx(p).tolist() == [1, -2, 70000]


def test_write_then_read_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown data type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "size mismatch"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "size mismatch"),
        (b"\x00\x00", "bad magic"),
    ],
)
def test_corrupt_files_give_one_clear_error(tmp_path, raw, message):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(raw)
    with pytest.raises(EffdnnError, match=message):
        read_idx(p)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    p = tmp_path / "t.gz"
    blob = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(EffdnnError, match="cannot read IDX"):
        read_idx(p)


def _fake_fashion(root, n_train=20, n_test=10, bad_label=False):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if bad_label:
            labels[0] = 42
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)


def test_fashion_reader_on_hand_built_files(tmp_path):
    _fake_fashion(tmp_path)
    b = fashion_mnist.load(str(tmp_path))
    assert len(b.train) == 20 and len(b.test) == 10
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10
    assert b.input_size == (28, 28) and b.num_classes == 10


def test_fashion_reader_rejects_bad_labels_and_missing_files(tmp_path):
    _fake_fashion(tmp_path, bad_label=True)
    with pytest.raises(EffdnnError, match="labels"):
        fashion_mnist.load(str(tmp_path))
    with pytest.raises(EffdnnError, match="dataset-fashion-mnist"):
        fashion_mnist.load(str(tmp_path / "nowhere"))
    _fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(EffdnnError, match="not found"):
        fashion_mnist.load(str(tmp_path))


def test_label_count_must_match_images(tmp_path):
    _fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))
    with pytest.raises(EffdnnError, match="20 images but labels"):
        fashion_mnist.load(str(tmp_path))


@pytest.mark.skipif(not (fashion_mnist.DEFAULT_ROOT and __import__("os").path.isdir(fashion_mnist.DEFAULT_ROOT)),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_shapes():
    b = fashion_mnist.load()
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert abs(float(b.train.tensors[0][:5000].mean())) < 0.1  # standardised

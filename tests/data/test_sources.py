import pytest
import torch

from effdnn.data import load_data
from effdnn.errors import EffdnnError


def test_digits_is_a_fixed_seeded_split():
    a, b = load_data("digits"), load_data("digits")
    assert len(a.train) + len(a.test) == 1797
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert a.train[0][0].shape == (1, 8, 8) and a.num_classes == 10


def test_synthetic_options():
    d = load_data("synthetic", n_train=10, n_test=5, num_classes=3, channels=2, size=6)
    assert d.train[0][0].shape == (2, 6, 6) and d.num_classes == 3 and len(d.test) == 5


def test_unknown_name_and_bad_option():
    with pytest.raises(EffdnnError, match="unknown data set 'cifar'"):
        load_data("cifar")
    with pytest.raises(EffdnnError, match="bad option"):
        load_data("synthetic", colour=True)


def test_user_data_file(tmp_path):
    f = tmp_path / "mydata.py"
    f.write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def make(n=30):\n"
        "    x = torch.randn(n, 3, 5, 5); y = torch.arange(n) % 4\n"
        "    return TensorDataset(x, y), TensorDataset(x[:10], y[:10])\n"
    )
    d = load_data(f"{f}:make", n=40)
    assert (d.in_channels, d.num_classes, d.input_size, len(d.train)) == (3, 4, (5, 5), 40)


def test_user_data_file_that_raises(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def make():\n    raise RuntimeError('disk on fire')\n")
    with pytest.raises(EffdnnError, match="disk on fire"):
        load_data(f"{f}:make")
    with pytest.raises(EffdnnError, match="no function 'nope'"):
        load_data(f"{f}:nope")
    with pytest.raises(EffdnnError, match="not found"):
        load_data(f"{tmp_path}/missing.py:make")

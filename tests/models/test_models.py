import pytest
import torch

from effdnn.errors import EffdnnError
from effdnn.models import build_model


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet", "vgg-small"])
@pytest.mark.parametrize("size, channels", [(8, 1), (28, 1), (32, 3)])
def test_every_model_on_every_input_size(name, size, channels):
    kwargs = {"width": 0.125} if name == "vgg-small" else {}
    m = build_model(name, channels, 10, (size, size), **kwargs)
    assert m(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_lenet5_parameter_count_by_hand():
    m = build_model("lenet5", 1, 10, (28, 28))
    hand = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert sum(p.numel() for p in m.parameters()) == hand == 61706


def test_resnet_depth_and_width():
    m20 = build_model("resnet", 3, 10, (32, 32), depth=20, width=16)
    m32 = build_model("resnet", 3, 10, (32, 32), depth=32, width=16)
    n_conv = lambda m: sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())  # noqa: E731
    assert n_conv(m20) == 19 and n_conv(m32) == 31  # + the fc layer = 20 / 32 weighted layers
    assert build_model("resnet", 3, 10, (32, 32), width=8).fc.in_features == 32
    with pytest.raises(EffdnnError, match="6n\\+2"):
        build_model("resnet", 3, 10, (32, 32), depth=21)


def test_user_model_file(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef tiny(in_channels, num_classes, input_size, hidden=7):\n"
                 "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels*input_size[0]*input_size[1], hidden),"
                 " torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n"
                 "def broken(**kw):\n    raise ValueError('no luck')\n"
                 "def not_a_model(**kw):\n    return 3\n")
    m = build_model(f"{f}:tiny", 1, 4, (8, 8), hidden=9)
    assert m(torch.randn(1, 1, 8, 8)).shape == (1, 4) and m[1].out_features == 9
    with pytest.raises(EffdnnError, match="no luck"):
        build_model(f"{f}:broken", 1, 4, (8, 8))
    with pytest.raises(EffdnnError, match="must return a torch.nn.Module"):
        build_model(f"{f}:not_a_model", 1, 4, (8, 8))
    with pytest.raises(EffdnnError, match="unknown model"):
        build_model("alexnet", 1, 4, (8, 8))


def test_lenet5_caffe_variant_is_the_deep_compression_network():
    """Caffe's MNIST LeNet (Han et al. 2015/2016: 431K weights): params and MACs by hand on 28x28."""
    import effdnn

    m = build_model("lenet5", 1, 10, (28, 28), variant="caffe")
    assert sum(p.numel() for p in m.parameters()) == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10) == 431_080
    macs = 20 * 24 * 24 * 25 + 50 * 8 * 8 * 20 * 25 + 800 * 500 + 500 * 10
    assert effdnn.cost(m, torch.randn(1, 1, 28, 28)).macs == macs == 2_293_000
    with pytest.raises(EffdnnError, match="variant"):
        build_model("lenet5", 1, 10, (28, 28), variant="big")


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
def test_mobilenetv2_runs_on_small_images_and_its_width_scales_it(size, channels):
    from effdnn.models.mobilenetv2 import InvertedResidual

    m = build_model("mobilenetv2", channels, 10, (size, size), width=0.5).eval()
    assert m(torch.randn(2, channels, size, size)).shape == (2, 10)
    blocks = [b for b in m.modules() if isinstance(b, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    dw = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert len(dw) == 17 and all(c.groups == c.in_channels == c.out_channels for c in dw)
    full = build_model("mobilenetv2", channels, 10, (size, size))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(m) < 0.4 * count(full)
    with pytest.raises(EffdnnError, match="width"):
        build_model("mobilenetv2", channels, 10, (size, size), width=0)

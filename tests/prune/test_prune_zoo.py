"""Structured pruning on torchvision classification models that cover the op families, at small sizes:
depthwise convolutions with squeeze-and-excitation gates, inverted residuals, concatenations, channel
shuffle, grouped convolutions (with SE, and in residual bottlenecks), channels-last LayerNorm with layer scale, and attention (ViT's nn.MultiheadAttention,
Swin's windowed attention, V1 and V2). Each pruned model must run with the same output shape, cut its
MACs by >= 1.5x at 30% of the channels, train one step, and export to ONNX with the same outputs.
One intra-op thread: the models are tiny, and threads only contend on a shared machine.
(benchmarks/prunability.py runs the whole zoo against Torch-Pruning.)"""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import effdnn
from effdnn.export.onnx import run_onnx
from effdnn.prune.structured import StructuredConfig, prune_channels

torchvision = pytest.importorskip("torchvision")


def _small_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


def _small_swin(v2: bool = False):
    from torchvision.models import swin_transformer as st

    extra = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    return st.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
                              num_classes=10, **extra)


def _small_regnet():
    from torchvision.models.regnet import BlockParams, RegNet

    return RegNet(BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
                  num_classes=10)


def _small_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], num_classes=10)


def _small_densenet():
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)


def _small_resnext():
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10)


tv = torchvision.models
ZOO = {  # name: builder (inputs 32x32)
    "mobilenet_v3_small": lambda: tv.mobilenet_v3_small(num_classes=10),  # depthwise, SE gates, hardswish
    "mobilenet_v2": lambda: tv.mobilenet_v2(num_classes=10, width_mult=0.5),  # inverted residuals, ReLU6
    "efficientnet_b0": lambda: tv.efficientnet_b0(num_classes=10),  # SiLU SE gates, stochastic depth
    "regnet_y": _small_regnet,  # grouped convolutions + SE
    "resnext": _small_resnext,  # grouped convolutions (narrower groups) inside residual bottlenecks
    "shufflenet_v2_x0_5": lambda: tv.shufflenet_v2_x0_5(num_classes=10),  # chunk + channel shuffle
    "squeezenet1_1": lambda: tv.squeezenet1_1(num_classes=10),  # cat, convolutional classifier
    "densenet": _small_densenet,  # dense concatenations
    "convnext": _small_convnext,  # channels-last LayerNorm, layer scale, depthwise 7x7
    "vit": _small_vit,  # class token, position embedding, nn.MultiheadAttention
    "swin": _small_swin,  # windowed attention, relative position bias, patch merging
    "swin_v2": lambda: _small_swin(v2=True),  # cosine attention (normalize), continuous position bias MLP
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ready(name: str) -> tuple[nn.Module, torch.Tensor]:
    build, size = ZOO[name], 32
    torch.manual_seed(0)
    model = build()
    model.train()
    with torch.no_grad():  # BatchNorm statistics from random batches
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval(), torch.randn(2, 3, size, size)


def _heads(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(head count, head_dim) of every attention: nn.MultiheadAttention and Swin's windowed attention."""
    out = {}
    for n, m in model.named_modules():
        w = m.in_proj_weight if isinstance(m, nn.MultiheadAttention) else getattr(getattr(m, "qkv", None), "weight", None)
        if w is not None and hasattr(m, "num_heads"):
            out[n] = (m.num_heads, w.shape[0] // 3 // m.num_heads)
    return out


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_prunes_runs_trains_and_exports(name, tmp_path):
    model, x = _ready(name)
    shape = model(x).shape
    heads = _heads(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept whole but the model's input and output
        info = prune_channels(model, x, StructuredConfig(sparsity=0.3))
    assert model(x).shape == shape
    for n, (count, head_dim) in _heads(model).items():  # attention: whole heads go, head_dim stays
        assert count < heads[n][0] and head_dim == heads[n][1], (n, heads[n], count, head_dim)
    assert len(heads) == {"vit": 2, "swin": 2, "swin_v2": 2}.get(name, 0)
    assert info["mac_reduction"] >= 1.5, info["mac_reduction"]
    assert 0.2 <= info["achieved_channel_reduction"] <= 0.35
    assert info["requested_channel_reduction"] == 0.3
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None)
    model.eval()
    path = effdnn.export_onnx(model, x, tmp_path / f"{name}.onnx")
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), want, rtol=1e-3, atol=1e-4)


def test_removing_silent_channels_of_a_depthwise_network_changes_nothing():
    """MobileNetV2 (effdnn's zoo): an inverted-residual block's expansion channels whose BatchNorm
    outputs are 0 (so the depthwise conv, its BatchNorm and the projection see 0 from them) are the ones
    bn_gamma removes, and the network's output stays exactly the same."""
    from effdnn.models import build_model

    torch.manual_seed(0)
    m = build_model("mobilenetv2", 3, 10, (32, 32), width=0.35).eval()
    x = torch.randn(2, 3, 12, 12)  # any size runs; small keeps the test fast
    block = m.features[3].block  # expansion conv-bn-relu6, depthwise conv-bn-relu6, projection conv-bn
    hidden = block[0][0].out_channels
    dead = list(range(0, hidden, 3))
    with torch.no_grad():
        for bn in (block[0][1], block[1][1]):
            bn.weight[dead] = 0.0
            bn.bias[dead] = 0.0
    want = m(x)
    layers = ["features.3.block.0.0", "features.3.block.1.0"]
    info = prune_channels(m, x, StructuredConfig(saliency="bn_gamma", sparsity=len(dead) / hidden, layers=layers))
    assert block[0][0].out_channels == block[1][0].out_channels == block[1][0].groups == hidden - len(dead)
    assert block[2][0].in_channels == hidden - len(dead)
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)
    assert info["groups"] == [{"producers": layers, "channels": hidden, "kept": hidden - len(dead)}]


def test_prune_api_on_the_zoo_mobilenetv2_halves_macs_and_reports_them():
    torch.manual_seed(0)
    from effdnn.models import build_model

    m = build_model("mobilenetv2", 1, 10, (28, 28), width=0.5).eval()
    x = torch.randn(2, 1, 12, 12)
    pruned = effdnn.prune(m, {"method": "channel", "saliency": "l1", "sparsity": 0.5}, [x])
    assert pruned(x).shape == (2, 10)
    assert effdnn.cost(m, x).macs / effdnn.cost(pruned, x).macs > 3.0


def test_bad_input_is_one_line():
    from effdnn.errors import EffdnnError

    model, x = _ready("regnet_y")
    with pytest.raises(EffdnnError, match="matches no"):
        prune_channels(copy.deepcopy(model), x, StructuredConfig(sparsity=0.3, layers=["nothing.like.this"]))
    with pytest.raises(EffdnnError, match="does not run on the example input") as e:
        prune_channels(copy.deepcopy(model), torch.randn(2, 5, 32, 32), StructuredConfig(sparsity=0.3))
    assert "\n" not in str(e.value)


def test_hugging_face_bert_prunes_through_its_attention():
    """A model torch.fx cannot trace (Hugging Face BERT, dict input): q / k / v lose whole heads (the head
    count and all_head_size lowered, head_dim kept), the MLP its hidden width; the hidden size (the model
    output) stays."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    m = transformers.BertModel(cfg).eval()
    x = {"input_ids": torch.randint(0, 100, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    shape = m(**x).last_hidden_state.shape
    info = prune_channels(m, x, StructuredConfig(sparsity=0.3))
    att = m.encoder.layer[0].attention.self
    assert att.query.out_features == att.key.out_features == att.value.out_features == 48  # 3 heads x 16
    assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (3, 16, 48)
    assert m.encoder.layer[0].attention.output.dense.in_features == 48
    assert m.encoder.layer[0].intermediate.dense.out_features == 90
    assert m(**x).last_hidden_state.shape == shape and info["mac_reduction"] > 1.3


def test_hugging_face_bert_prunes_through_the_api_with_dict_batches():
    """``effdnn.prune(model, {"method": "channel"}, batches)`` with tokenizer-style dict batches: the example
    input is the first 8 rows of every tensor of the first batch."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    m = transformers.BertModel(cfg).eval()
    x = {"input_ids": torch.randint(0, 100, (12, 16)), "attention_mask": torch.ones(12, 16, dtype=torch.long)}
    p = effdnn.prune(m, {"method": "channel", "sparsity": 0.5, "exclude": ["pooler*"]}, [x])
    assert p.encoder.layer[0].attention.self.num_attention_heads == 2
    assert p.encoder.layer[0].intermediate.dense.out_features == 64
    assert p(**x).last_hidden_state.shape == (12, 16, 64)

import pytest
import torch
from torch import nn

from effdnn.cost import DEFAULT_TABLE, EnergyTable, LayerPrecision, cost
from effdnn.errors import EffdnnError
from effdnn.models import build_model


def test_lenet5_macs_and_params_by_hand():
    r = cost(build_model("lenet5", 1, 10, (28, 28)), torch.randn(3, 1, 28, 28))
    conv1 = 6 * 28 * 28 * (1 * 5 * 5)  # output elements x (C_in x K x K)
    conv2 = 16 * 10 * 10 * (6 * 5 * 5)
    fcs = 400 * 120 + 120 * 84 + 84 * 10
    assert [l.macs for l in r.layers] == [conv1, conv2, 400 * 120, 120 * 84, 84 * 10]
    assert r.macs == conv1 + conv2 + fcs == 416_520
    assert r.params == 61_706 and r.size_bytes == 61_706 * 4 == r.fp32_size_bytes
    assert r.compression_ratio == 1.0


def test_energy_of_one_layer_by_hand():
    lin = nn.Linear(100, 10)
    with torch.no_grad():
        lin.weight.fill_(0.5)
        lin.bias.zero_()
    x = torch.ones(1, 100)  # no zeros: every MAC counts
    r = cost(lin, x)
    (layer,) = r.layers
    compute = 1000 * (3.7 + 0.9)  # fp32 mult + fp32 add per MAC
    weights = (1010 * 4) / 8 * 10.0  # 4,040 bytes of weights fit the 8 KB SRAM: 10 pJ per 64 bits
    acts = (100 + 10) * 4 / 8 * 10.0  # 440 bytes of activations, from the 8 KB SRAM
    assert layer.compute_energy_pj == pytest.approx(compute)
    assert layer.memory_energy_pj == pytest.approx(weights + acts)
    assert r.energy_pj == pytest.approx(compute + weights + acts)
    assert layer.bitops == pytest.approx(1000 * 32 * 32)


def test_width_scaling_rules():
    t = DEFAULT_TABLE
    assert t.mult("int", 8, 8) == pytest.approx(0.2)
    assert t.mult("int", 4, 4) == pytest.approx(0.2 / 4)  # multiplier ~ bits^2
    assert t.mult("int", 4, 8) == pytest.approx(0.2 / 2)
    assert t.add("int", 16) == pytest.approx(0.06)  # adder ~ bits, from the int8 entry
    assert t.add("float", 32) == 0.9 and t.mult("float", 16, 16) == 1.1
    assert t.mult("float", 8, 8) == pytest.approx(1.1 / 4)
    assert t.read_64b(1) == 10 and t.read_64b(20_000) == 20 and t.read_64b(500_000) == 100
    assert t.read_64b(10 << 20) == t.dram_read_64b


class Int4Linear(nn.Linear):
    """A layer that states its deployed precision the way quantized layers do."""

    def effdnn_precision(self):
        return LayerPrecision(4, 8, "int", "int", storage_bits=self.weight.numel() * 4 + self.out_features * 32, label="int4")


def test_layer_precision_drives_storage_bitops_and_energy():
    lin = Int4Linear(64, 16)
    x = torch.rand(2, 64) + 0.1
    r = cost(lin, x)
    (layer,) = r.layers
    assert r.size_bytes == (64 * 16 * 4 + 16 * 32) / 8
    assert layer.bitops == pytest.approx(64 * 16 * 4 * 8)
    assert layer.compute_energy_pj == pytest.approx(64 * 16 * (0.2 * 4 * 8 / 64 + 0.1))  # int4 x int8 mult + int32 add
    assert layer.precision == "int4" and r.compression_ratio == pytest.approx((64 * 16 + 16) * 4 / r.size_bytes)


def test_zero_weights_and_activations_skip_macs():
    lin = nn.Linear(10, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 10))
        lin.weight[:, :5] = 0  # half the weights are zero
    x = torch.randn(1, 10)
    x[0, :2] = 0  # 20% zero activations
    r = cost(lin, x)
    assert r.macs == 40 and r.weight_sparsity == 0.5 and r.activation_sparsity == pytest.approx(0.2)
    assert r.effective_macs == pytest.approx(40 * 0.5 * 0.8)
    assert cost(lin, x, skip_zeros=False).effective_macs == 40


def test_matmul_and_hugging_face_linear_layers():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (2, 8))
    r = cost(model, {"input_ids": ids})
    L, H, I = 8, 16, 32
    per_layer_linear = L * (3 * H * H + H * H + H * I + I * H)  # q, k, v, attention output, FFN in, FFN out
    attention = L * L * H * 2  # scores and weighted sum, all heads together
    pooler_and_head = H * H + H * 2
    assert r.macs == 2 * (per_layer_linear + attention) + pooler_and_head
    linear_layers = [l for l in r.layers if l.type == "Linear"]
    assert len(linear_layers) == 2 * 6 + 2


def test_energy_table_from_file_replaces_the_default(tmp_path):
    f = tmp_path / "table.yaml"
    f.write_text("int_mult: {8: 1.0, 32: 16.0}\nsource: my table\n")
    t = EnergyTable.from_file(f)
    assert t.mult("int", 8, 8) == 1.0 and t.float_mult == DEFAULT_TABLE.float_mult and t.source == "my table"
    f.write_text("int_mul: {8: 1.0}\n")
    with pytest.raises(EffdnnError, match="int_mul: unknown key"):
        EnergyTable.from_file(f)
    with pytest.raises(EffdnnError, match="positive widths"):
        EnergyTable(int_add={0: 1.0})


class Packed(nn.Module):
    """A wrapper that states the storage of its whole subtree (as quantized wrappers do)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8)

    def forward(self, x):
        return self.inner(x)

    def effdnn_precision(self):
        return LayerPrecision(1, 32, "int", "float", storage_bits=64 + 8 * 32)


def test_subtree_storage_is_not_counted_twice():
    m = nn.Sequential(Packed(), nn.ReLU(), nn.Linear(8, 2))
    r = cost(m, torch.randn(4, 8))
    assert r.size_bytes == (64 + 8 * 32) / 8 + (8 * 2 + 2) * 4
    assert [l.name for l in r.layers] == ["0", "2"]  # the op inside is charged to the wrapper
    assert r.layers[0].weight_bits == 1 and r.layers[0].storage_bytes == 40


class CustomKernel(nn.Module):
    """A layer computed without linear / conv ops (as bit-packed kernels are) that counts its own MACs."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        return (x.unsqueeze(1) * self.weight).sum(-1) + x.matmul(torch.zeros(5, 3))  # the matmul is not charged

    def effdnn_macs(self, x, out):
        return x.shape[0] * 5 * 3


def test_modules_that_count_their_own_macs():
    m = nn.Sequential(CustomKernel(), nn.Linear(3, 2))
    r = cost(m, torch.randn(4, 5))
    assert [l.name for l in r.layers] == ["0", "1"]
    assert r.layers[0].macs == 15 and r.macs == 15 + 6


def test_emulated_low_precision_layers_count_their_macs():
    from effdnn.lowp.gemm import GemmPolicy, convert_layers

    m = build_model("lenet5", 1, 10, (8, 8))
    x = torch.randn(4, 1, 8, 8)
    dense = cost(m, x).macs
    convert_layers(m, lambda name, mod, i, n: GemmPolicy(label="fp32"))
    assert cost(m, x).macs == dense


def test_rows_add_up_to_the_totals_on_a_small_bert():
    """One row per weight (embeddings and LayerNorms included); no row repeats another's parameters."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    m = transformers.BertModel(cfg).eval()
    r = cost(m, {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)})
    assert sum(l.params for l in r.layers) == r.params == sum(p.numel() for p in m.parameters())
    assert sum(l.storage_bytes for l in r.layers) == pytest.approx(r.size_bytes)
    assert sum(l.energy_pj for l in r.layers) == pytest.approx(r.energy_pj)
    rows = {l.name: l for l in r.layers}
    assert rows["embeddings.word_embeddings"].params == 50 * 16 and rows["embeddings.word_embeddings"].macs == 0
    assert rows["embeddings.position_embeddings"].params == 32 * 16
    assert rows["encoder.layer.0.attention.self.query"].params == 16 * 16 + 16
    attention = [l for n, l in rows.items() if n.endswith("attention.self")]
    assert attention and all(l.params == 0 and l.macs > 0 for l in attention)  # q @ k, attn @ v: no weights
    assert len({l.name for l in r.layers}) == len(r.layers)

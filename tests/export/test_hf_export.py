"""export_onnx on Hugging Face models: dict / tuple inputs, dynamic batch and sequence axes, int8 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from effdnn.export import op_counts, ort_fused_ops
from effdnn.export.onnx import run_onnx

transformers = pytest.importorskip("transformers")


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _batch(b: int, s: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, s // 2:] = 0  # padding in the example too: the mask must stay an input, not a traced constant
    return {"input_ids": torch.randint(0, 100, (b, s), generator=g), "attention_mask": mask,
            "token_type_ids": torch.randint(0, 2, (b, s), generator=g)}


def test_dict_input_exports_with_dynamic_batch_and_sequence(tmp_path) -> None:
    m = _bert()
    path = effdnn.export_onnx(m, _batch(2, 8), tmp_path / "b.onnx")
    x = _batch(8, 16, seed=1)
    x["attention_mask"][3, 5:] = 0
    hidden, pooled = run_onnx(path, x, all_outputs=True)
    ref = m(**x)
    assert hidden.shape == (8, 16, 32) and pooled.shape == (8, 32)
    np.testing.assert_allclose(hidden, ref.last_hidden_state.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(pooled, ref.pooler_output.detach().numpy(), atol=1e-4)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state", "pooler_output"]
    assert all(i.shape[:2] == ["batch", "sequence"] for i in sess.get_inputs())


def test_tuple_input_keeps_every_item(tmp_path) -> None:
    m = _bert()
    b = _batch(2, 8)
    path = effdnn.export_onnx(m, (b["input_ids"], b["attention_mask"]), tmp_path / "t.onnx")
    x = _batch(8, 16, seed=2)
    out = run_onnx(path, (x["input_ids"], x["attention_mask"]))
    np.testing.assert_allclose(out, m(x["input_ids"], x["attention_mask"]).last_hidden_state.detach().numpy(), atol=1e-4)
    assert op_counts(path).get("Gather", 0) >= 2


def test_keys_that_forward_does_not_take_are_one_line(tmp_path) -> None:
    with pytest.raises(EffdnnError, match="key 'pixel_values' is not an argument of BertModel.forward"):
        effdnn.export_onnx(_bert(), {**_batch(2, 8), "pixel_values": torch.zeros(2, 3)}, tmp_path / "x.onnx")


def test_quantized_bert_stores_int8_weights_and_fuses(tmp_path) -> None:
    m = _bert()
    calib = [_batch(4, 8, seed=i) for i in range(2)]
    q = effdnn.quantize(m, {"method": "ptq", "act": {"calibrator": "max"}}, calib)
    f32 = effdnn.export_onnx(m, _batch(2, 8), tmp_path / "f.onnx")
    path = effdnn.export_onnx(q, _batch(2, 8), tmp_path / "q.onnx", embeddings="int8")
    import onnx

    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == 13 + 3  # 12 encoder linears + pooler, 3 embedding tables
    assert not [n for n, i in inits.items() if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[1] > 1]
    weights = lambda p: sum(len(i.raw_data) for i in onnx.load(str(p)).graph.initializer)  # noqa: E731
    assert weights(path) < 0.35 * weights(f32)  # int8 codes + per-channel scales + fp32 biases and LayerNorms
    ops = op_counts(path)
    assert ops["QuantizeLinear"] == 13  # activations only, q / k / v each their own
    fused = ort_fused_ops(path, tmp_path / "opt.onnx")
    assert fused.get("MatMulIntegerToFloat", 0) == 12  # every encoder linear runs on the integer kernel
    x = _batch(8, 16, seed=3)
    out = run_onnx(path, x)
    ref = q(**x).last_hidden_state.detach().numpy()
    cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99


def test_plain_cnn_export_is_unchanged(tmp_path) -> None:
    from effdnn.models import build_model

    m = build_model("lenet5", 1, 10, (28, 28)).eval()
    path = effdnn.export_onnx(m, (torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)), tmp_path / "c.onnx")
    x = torch.randn(5, 1, 28, 28)
    np.testing.assert_allclose(run_onnx(path, x), m(x).detach().numpy(), atol=1e-4)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and sess.get_inputs()[0].shape[1:] == [1, 28, 28]


def _per_token(m: torch.nn.Module, weight_bits: int) -> torch.nn.Module:
    calib = [_batch(4, 8, seed=i) for i in range(2)]
    spec = {"method": "smoothquant", "alpha": 0.5, "weight": {"bits": weight_bits, "granularity": "per_channel"},
            "act": {"bits": 8, "dynamic": "per_token"}, "embedding": {"bits": 8}}
    return effdnn.quantize(m, spec, calib)


def test_per_token_activations_export_as_integer_matmuls(tmp_path) -> None:
    import onnx

    q = _per_token(_bert(), weight_bits=7)  # W7A8: u8 x s8 pair sums stay inside int16 on every CPU
    path = effdnn.export_onnx(q, _batch(2, 8), tmp_path / "q.onnx", embeddings="int8")
    ops = op_counts(path)
    assert ops["MatMulInteger"] == 13 and "DequantizeLinear" not in ops  # every linear, pooler included
    inits = onnx.load(str(path)).graph.initializer
    assert not [i for i in inits if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) > 1]
    assert ort_fused_ops(path, tmp_path / "opt.onnx").get("MatMulInteger", 0) == 13  # onnxruntime keeps them integer
    x = _batch(8, 16, seed=3)
    x["attention_mask"][3, 5:] = 0
    out = run_onnx(path, x)
    ref = q(**x).last_hidden_state.detach().numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4 * np.abs(ref).max())  # the fake-quantized model's values
    fused = effdnn.export_onnx(q, _batch(2, 8), tmp_path / "o.onnx", dynamic_activations="ort")
    assert op_counts(fused)["MatMulIntegerToFloat"] == 13  # onnxruntime's kernel, weight scales inside the GEMM
    np.testing.assert_allclose(run_onnx(fused, x), ref, atol=2e-4 * np.abs(ref).max())
    flt = effdnn.export_onnx(q, _batch(2, 8), tmp_path / "f.onnx", dynamic_activations="float")
    assert "MatMulInteger" not in op_counts(flt)
    np.testing.assert_allclose(run_onnx(flt, x), ref, atol=2e-4 * np.abs(ref).max())


def test_integer_export_names_saturating_layers_and_bad_option(tmp_path) -> None:
    q = _per_token(_bert(), weight_bits=8)  # W8A8: 2 * 255 * 127 > 32767
    with pytest.warns(UserWarning, match="can saturate int16 pair sums"):
        effdnn.export_onnx(q, _batch(2, 8), tmp_path / "q.onnx")
    with pytest.raises(EffdnnError, match="dynamic_activations must be 'integer', 'ort' or 'float'"):
        effdnn.export_onnx(q, _batch(2, 8), tmp_path / "x.onnx", dynamic_activations="int4")

"""Recipes on text: sentences tokenized by the model file's tokenizer, or tokenized batches; unlabelled text
is scored by the embeddings' cosine against the baseline, labelled text by accuracy (tiny random BERT)."""
from __future__ import annotations

import json

import pytest
import torch

import effdnn
from effdnn.cli import main
from effdnn.errors import EffdnnError, MissingDependency
from tests.text.tiny_text import write

pytest.importorskip("transformers")

INT4 = {"bits": 4, "granularity": "per_group", "group_size": 32}


def _recipe(folder, data="tiny_text.py:text", experiments=(), **over):
    data = data if isinstance(data, dict) else {"name": data}
    return {"name": "tiny-text", "data": {**data, "batch_size": 8}, "model": {"name": "tiny_text.py:build"},
            "baseline": {"epochs": 0}, "experiments": list(experiments), "output": str(folder / "run"),
            "base_dir": str(folder), **over}


def test_unlabelled_sentences_are_scored_by_cosine_against_the_baseline(tmp_path):
    folder = write(tmp_path)
    exps = [{"name": "w8a8-smoothquant", "quantize": {"method": "smoothquant", "alpha": 0.5,
                                                      "act": {"bits": 8, "dynamic": "per_token"}}},
            {"name": "gptq-int4", "quantize": {"method": "gptq", "weight": INT4, "act": None, "embedding": {"bits": 8}}},
            {"name": "wanda-50-distill", "prune": {"method": "wanda", "sparsity": 0.5, "exclude": ["pooler*"]},
             "finetune": {"epochs": 1, "lr": 1e-4, "distill": {"feature": "cosine"}}}]
    report = effdnn.run(_recipe(folder, experiments=exps))
    assert report["metric"] == "cosine"
    base, rows = report["baseline"], {r["name"]: r for r in report["experiments"]}
    assert base["cosine_mean"] == pytest.approx(1.0) and base["cosine_min"] == pytest.approx(1.0)
    for r in rows.values():
        assert 0.5 < r["cosine_min"] <= r["cosine_mean"] < 1.0 + 1e-6 and r["accuracy"] == r["cosine_mean"]
    assert rows["w8a8-smoothquant"]["cosine_mean"] > 0.99
    assert rows["gptq-int4"]["size_bytes"] < 0.3 * base["size_bytes"]
    assert rows["wanda-50-distill"]["weight_sparsity"] > 0.3
    md = (tmp_path / "run" / "report.md").read_text()
    assert "cosine mean" in md and "cosine min" in md
    assert json.loads((tmp_path / "run" / "report.json").read_text())["metric"] == "cosine"


def test_the_metric_is_the_cosine_of_mean_pooled_embeddings(tmp_path):
    """The runner's number, recomputed by hand for a weight-only int8 model."""
    import importlib.util

    folder = write(tmp_path)
    report = effdnn.run(_recipe(folder, experiments=[{"name": "int8", "quantize": {"method": "ptq", "act": None}}]))
    spec = importlib.util.spec_from_file_location("tiny_text_file", folder / "tiny_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok, model = mod.tokenizer(), mod.build()
    batch = dict(tok(mod.text()[1], padding=True, truncation=True, return_tensors="pt"))
    q = effdnn.quantize(model, {"method": "ptq", "act": None}, [batch])

    def pooled(m):
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        w = batch["attention_mask"][..., None].float()
        return (h * w).sum(1) / w.sum(1)

    cos = torch.nn.functional.cosine_similarity(pooled(q), pooled(model))
    assert report["experiments"][0]["cosine_mean"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert report["experiments"][0]["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-5)


def test_labelled_sentences_train_and_report_accuracy(tmp_path):
    folder = write(tmp_path)
    report = effdnn.run(_recipe(folder, data="tiny_text.py:labelled", baseline={"epochs": 1, "lr": 1e-3},
                                experiments=[{"name": "w8", "quantize": {"method": "ptq", "act": None}}]))
    assert report["metric"] == "accuracy" and "cosine_mean" not in report["baseline"]
    assert 0.0 <= report["experiments"][0]["accuracy"] <= 1.0


def test_tokenized_batches_of_different_lengths(tmp_path):
    folder = write(tmp_path)
    report = effdnn.run(_recipe(folder, data="tiny_text.py:batches",
                                experiments=[{"name": "w8", "quantize": {"method": "ptq", "act": None}}]))
    assert report["baseline"]["cosine_mean"] == pytest.approx(1.0)
    assert 0.9 < report["experiments"][0]["cosine_mean"] < 1.0 + 1e-6


def test_text_bad_input_is_one_line(tmp_path):
    folder = write(tmp_path)
    with pytest.raises(EffdnnError, match="cannot be trained"):
        effdnn.run(_recipe(folder, baseline={"epochs": 1}))
    with pytest.raises(EffdnnError, match="need a tokenizer"):  # a zoo model has no tokenizer()
        effdnn.run(_recipe(folder, model={"name": "mlp"}))
    with pytest.raises(EffdnnError, match="data.tokenizer: 'nowhere' is neither"):
        effdnn.run(_recipe(folder, data={"name": "tiny_text.py:text", "tokenizer": "nowhere"}))
    (folder / "bad.py").write_text("def mixed():\n    return ['a cat', ('a dog', 1)], ['a cat']\n")
    with pytest.raises(EffdnnError, match="mixes sentences"):
        effdnn.run(_recipe(folder, data="bad.py:mixed"))


def test_a_missing_optional_package_is_one_line(tmp_path, capsys):
    folder = write(tmp_path)
    with pytest.raises(MissingDependency, match="'effdnn_no_such_package'.*skipped"):
        effdnn.run(_recipe(folder, data="tiny_text.py:needs_missing"))
    (folder / "r.yaml").write_text(json.dumps(_recipe(folder, data="tiny_text.py:needs_missing")))
    with pytest.raises(SystemExit) as e:
        main(["run", str(folder / "r.yaml")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "not installed" in err


def test_an_export_row_is_scored_in_onnxruntime_on_the_file(tmp_path):
    pytest.importorskip("onnxruntime")
    folder = write(tmp_path)
    exps = [{"name": "onnx-fp32", "export": {"format": "onnx"}},
            {"name": "onnx-int8", "quantize": {"method": "ptq", "act": {"calibrator": "max"}},
             "export": {"format": "onnx", "embeddings": "int8"}}]
    report = effdnn.run(_recipe(folder, experiments=exps))
    f32, i8 = report["experiments"]
    assert f32["cosine_mean"] == pytest.approx(1.0, abs=1e-4)  # the same function, run by onnxruntime
    assert 0.9 < i8["cosine_mean"] < 1.0
    assert i8["size_bytes"] == (tmp_path / "run" / "experiments" / "onnx-int8" / "model.onnx").stat().st_size
    assert i8["size_bytes"] < 0.5 * f32["size_bytes"]


def test_the_demos_text_part_runs(tmp_path):
    from pathlib import Path

    report = effdnn.run(Path(effdnn.__file__).parent / "recipes" / "demo_text.yaml", out=tmp_path / "demo-text")
    rows = {r["name"]: r for r in report["experiments"]}
    assert report["metric"] == "cosine" and set(rows) == {"w8a8-per-token-smoothquant", "gptq-int4-g32", "wanda-50"}
    assert rows["w8a8-per-token-smoothquant"]["cosine_mean"] > 0.99
    assert 0.5 < rows["wanda-50"]["cosine_mean"] < 0.999 and rows["wanda-50"]["weight_sparsity"] > 0.4

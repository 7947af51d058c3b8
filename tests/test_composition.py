"""Every quantize method against every other block, end to end through ``effdnn.run`` (a table in the
manner of PEFT's TEST_CASES): pairs that compose run and keep their shared invariants, refused pairs
fail at recipe validation with one line."""
import pytest
import torch

import effdnn
from effdnn.composition import check_composition, find_rule
from effdnn.errors import EffdnnError
from effdnn.formats import IntFormat
from effdnn.recipe import parse_recipe
from effdnn.registry import QUANTIZE, REGISTRIES
from effdnn.runner import Runner

QUANT = {n: {"method": n} for n in QUANTIZE.names()}
QUANT["ptq"] = {"method": "ptq", "weight": {"bits": 4, "granularity": "per_channel"}, "act": {"bits": 8}}
for _n in ("qat", "lsq", "pact", "dorefa"):
    QUANT[_n] = {"method": _n, "weight": {"bits": 4}, "act": {"bits": 8}, "calib_batches": 1}

OTHER = {
    "prune-magnitude": ("prune", {"method": "magnitude", "sparsity": 0.8}),
    "prune-nm": ("prune", {"method": "magnitude", "nm": "2:4"}),
    "prune-channel": ("prune", {"method": "channel", "sparsity": 0.5, "batches": 1}),
    "act-fatrelu": ("activation_sparsity", {"method": "fatrelu", "target": 0.7, "batches": 1}),
    "act-l1": ("activation_sparsity", {"method": "l1", "weight": 1e-3, "batches": 1}),
    "act-hoyer": ("activation_sparsity", {"method": "hoyer", "weight": 1e-2, "batches": 1}),
    "precision-fp16": ("precision", {"train": "fp16", "step_time_batches": 0}),
    "precision-bf16": ("precision", {"train": "bf16", "step_time_batches": 0}),
    "precision-fp8": ("precision", {"train": "fp8", "step_time_batches": 0}),
    "compress-dc": ("compress", {"method": "deep-compression", "bits": 4}),
}
FINETUNE = {"epochs": 1, "lr": 0.01, "max_batches": 2}


def _recipe(tmp_path, experiments):
    return {"name": "compose", "data": {"name": "synthetic", "batch_size": 64, "kwargs": {"n_train": 128, "n_test": 64}},
            "model": {"name": "mlp", "kwargs": {"hidden": [32, 16]}}, "baseline": {"epochs": 2, "lr": 0.01},
            "output": str(tmp_path / "out"), "experiments": experiments}


def _experiment(q: str, other: str) -> dict:
    block, cfg = OTHER[other]
    return {"name": f"{q}-{other}", "quantize": QUANT[q], block: cfg, "finetune": FINETUNE, "calib_batches": 1}


def _refusal(q: str, other: str) -> str | None:
    block, cfg = OTHER[other]
    return find_rule(("quantize", QUANTIZE.parse(QUANT[q])), (block, REGISTRIES[block].parse(cfg))).refusal


def _check_model(model: torch.nn.Module, row: dict, tmp_path) -> None:
    for name, m in model.named_modules():
        mask = getattr(m, "weight_mask", None)
        if not isinstance(mask, torch.Tensor):
            continue
        assert torch.all(m.weight[~mask] == 0), f"{name}: a pruned weight came back"
        if callable(getattr(m, "_q_weight", None)):
            assert torch.all(m._q_weight()[~mask] == 0), f"{name}: quantized weight non-zero where pruned"
        wq = getattr(m, "weight_quant", None)
        if wq is not None and isinstance(getattr(wq, "fmt", None), IntFormat) and wq.params is not None:
            codes = wq.fmt.quantize(m.weight.detach(), wq.params)
            assert codes.min() >= wq.fmt.qmin and codes.max() <= wq.fmt.qmax
            if wq.fmt.symmetric:
                assert torch.all(codes[~mask] == 0), f"{name}: integer code non-zero where pruned"
    x = torch.randn(4, 1, 8, 8)
    path = effdnn.export_onnx(model, x, tmp_path / f"{row['name']}.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    used = {i for n in graph.node for i in n.input} | {t.name for t in graph.initializer}
    assert not any("weight_mask" in name for name in used), "a mask multiply was exported"
    c = effdnn.cost(model, x)
    assert c.size_bytes == pytest.approx(row["size_bytes"])


def _run_captured(recipe: dict, monkeypatch) -> tuple[dict, dict]:
    models: dict[str, torch.nn.Module] = {}
    measure = Runner.measure

    def capture(self, model, name, wall, extra):
        models[name] = model
        return measure(self, model, name, wall, extra)

    monkeypatch.setattr(Runner, "measure", capture)
    return effdnn.run(recipe), models


@pytest.mark.parametrize("q", QUANTIZE.names())
def test_quantize_method_composes_with_every_block(q, tmp_path, monkeypatch):
    composing = [o for o in OTHER if _refusal(q, o) is None]
    report, models = _run_captured(_recipe(tmp_path, [_experiment(q, o) for o in composing]), monkeypatch)
    rows = {r["name"]: r for r in report["experiments"]}
    fp32 = report["baseline"]["size_bytes"]
    for o in composing:
        row = rows[f"{q}-{o}"]
        for key in ("accuracy", "size_bytes", "compression_ratio", "weight_sparsity", "techniques"):
            assert key in row, (o, key)
        block = OTHER[o][0]
        assert set(row["techniques"]) == {"quantize", block}
        assert row["size_bytes"] < fp32, f"{o}: the quantization was dropped"
        if o == "prune-magnitude":
            assert row["weight_sparsity"] >= 0.79
        if o == "prune-nm":
            assert row["weight_sparsity"] >= 0.49
        if block == "precision":
            assert row["precision"] == OTHER[o][1]["train"] and row["precision_trains"] == "the quantized model"
        _check_model(models[row["name"]], row, tmp_path)


REFUSED = [(q, o) for q in QUANTIZE.names() for o in OTHER if _refusal(q, o) is not None]


@pytest.mark.parametrize("q,o", REFUSED)
def test_refused_pairs_fail_at_validation_with_one_line(q, o):
    with pytest.raises(EffdnnError) as err:
        parse_recipe({"experiments": [_experiment(q, o)]})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("experiments[0]") and any(w in msg for w in ("precision", "packed", "prune +"))


def test_the_refusals_are_the_documented_ones():
    assert sorted(REFUSED) == sorted([(q, "precision-fp8") for q in QUANTIZE.names()]
                                     + [("ptq", "precision-fp16"), ("ptq", "precision-bf16")]
                                     + [(q, o) for q in ("gptq", "smoothquant") for o in OTHER if o.startswith("prune-")])
    with pytest.raises(EffdnnError, match="packed"):
        check_composition({"prune": {"method": "magnitude", "sparsity": 0.5}, "quantize": {"method": "bwn", "packed": True}})
    with pytest.raises(EffdnnError, match="masks"):
        check_composition({"prune": {"method": "magnitude", "sparsity": 0.5}, "precision": {"train": "hfp8"}})
    check_composition({"prune": {"method": "channel", "sparsity": 0.5}, "precision": {"train": "fp8"}})
    check_composition({"prune": {"method": "magnitude", "sparsity": 0.5}, "quantize": {"method": "qat"},
                       "precision": {"train": "bf16"}, "compress": {}, "finetune": {"epochs": 1}})

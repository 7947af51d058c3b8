from pathlib import Path

import pytest

import effdnn
from effdnn.errors import EffdnnError, NotAvailableYet
from effdnn.recipe import load_recipe, parse_recipe


@pytest.mark.parametrize(
    "recipe, path",
    [
        ({"data": {"name": "digits", "batchsize": 3}}, "recipe: data.batchsize: unknown key"),
        ({"data": {"batch_size": 0}}, "recipe: data.batch_size: Input should be greater than or equal to 1"),
        ({"baseline": {"optimizer": "lion"}}, "recipe: baseline.optimizer: Input should be 'sgd', 'adam' or 'adamw'"),
        ({"experiments": [{"name": "a"}, {"name": "b", "finetune": {"epochs": -1}}]}, "recipe: experiments[1].finetune.epochs"),
        ({"experiments": [{"name": "a", "quantise": {}}]}, "recipe: experiments[0].quantise: unknown key"),
        ({"experiments": [{"name": "a"}, {"name": "a"}]}, "used twice"),
        ({"experiments": [{"name": "x/y"}]}, "recipe: experiments[0].name"),
        ({"colour": 1}, "recipe: colour: unknown key"),
    ],
)
def test_errors_name_their_key_path(recipe, path):
    with pytest.raises(EffdnnError) as e:
        parse_recipe(recipe)
    assert str(e.value).startswith(path) or path in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_block_with_no_registered_method_is_not_available_yet(monkeypatch):
    from effdnn.registry import REGISTRIES, Registry

    monkeypatch.setitem(REGISTRIES, "precision", Registry("precision", key="train"))
    with pytest.raises(NotAvailableYet, match=r"experiments\[0\]\.precision: 'precision' is not available yet"):
        parse_recipe({"experiments": [{"name": "a", "precision": {"train": "fp8"}}]})


def test_technique_blocks_are_validated_before_any_training():
    with pytest.raises(EffdnnError, match=r"experiments\[1\]\.prune"):
        parse_recipe({"experiments": [{"name": "a"}, {"name": "b", "prune": {"method": "magnitude", "sparsity": 1.5}}]})


def test_yaml_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(EffdnnError, match="malformed YAML at line"):
        load_recipe(p)
    p.write_text("")
    with pytest.raises(EffdnnError, match="empty file"):
        load_recipe(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(EffdnnError, match="mapping at the top level"):
        load_recipe(p)
    with pytest.raises(EffdnnError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_defaults():
    r = parse_recipe({})
    assert r.data.name == "digits" and r.model.name == "lenet5" and r.experiments == []


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", [*SHIPPED, *(Path(effdnn.__file__).parent / "recipes").glob("demo*.yaml")],
                         ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    """Every recipe in recipes/ and the demo parses, technique blocks included (nothing is run)."""
    recipe = load_recipe(path)
    assert recipe.experiments or recipe.baseline.epochs > 0

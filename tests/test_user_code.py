"""User code references ``"file.py:fn"``: a relative path is the recipe's folder's first, then the
working folder's (the documented order)."""
import pytest
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.models import build_model
from effdnn.recipe import load_recipe
from effdnn.utils.user_code import load_user_function, resolve_user_file


def _write(folder, name, tag):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"from torch import nn\ndef fn(**kw):\n    return {tag!r}\n"
                               f"def net(in_channels, num_classes, input_size):\n"
                               f"    m = nn.Linear(1, 1)\n    m.tag = {tag!r}\n    return m\n")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    recipe_dir, work = tmp_path / "recipes", tmp_path / "work"
    _write(recipe_dir, "m.py", "recipe")
    _write(work, "m.py", "working")
    _write(recipe_dir / "sub", "s.py", "recipe/sub")
    _write(work, "only_here.py", "working only")
    monkeypatch.chdir(work)
    return recipe_dir, work


def test_the_recipes_folder_wins_over_the_working_folder(folders):
    recipe_dir, _ = folders
    assert load_user_function("m.py:fn", base_dir=recipe_dir)() == "recipe"
    assert load_user_function("./m.py:fn", base_dir=recipe_dir)() == "recipe"
    assert load_user_function("sub/s.py:fn", base_dir=recipe_dir)() == "recipe/sub"
    assert resolve_user_file("m.py", recipe_dir) == recipe_dir / "m.py"


def test_the_working_folder_is_the_fallback_and_absolute_paths_are_kept(folders):
    recipe_dir, work = folders
    assert load_user_function("only_here.py:fn", base_dir=recipe_dir)() == "working only"
    assert load_user_function("m.py:fn")() == "working"  # no recipe: the working folder
    assert load_user_function(f"{work / 'm.py'}:fn", base_dir=recipe_dir)() == "working"
    with pytest.raises(EffdnnError, match=r"'nowhere.py' not found \(looked in .*recipes and in the working folder\)"):
        load_user_function("nowhere.py:fn", base_dir=recipe_dir)


def test_a_recipe_loaded_from_another_folder_uses_its_own_model_file(folders):
    recipe_dir, _ = folders
    (recipe_dir / "r.yaml").write_text("name: x\ndata: {name: digits}\nmodel: {name: m.py:net}\n")
    r = load_recipe(recipe_dir / "r.yaml")
    model = build_model(r.model.name, 1, 10, (8, 8), base_dir=r.base_dir)
    assert isinstance(model, nn.Linear) and model.tag == "recipe"

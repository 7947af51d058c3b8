"""The CLI: bad input gives one line on stderr and exit code 2, never a traceback."""
import subprocess
import sys

import pytest
import yaml


def effdnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "effdnn.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _one_clear_line(p, needle):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and needle in p.stderr, p.stderr
    assert len([l for l in p.stderr.splitlines() if l.strip()]) == 1, p.stderr


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: [x\n", "malformed YAML"),
        ("model: {name: alexnet}\nbaseline: {epochs: 1}\n", "unknown model 'alexnet'"),
        ("data: {name: cifar}\n", "unknown data set 'cifar'"),
        ("baseline: {epochs: 1, lr: -1}\n", "baseline.lr"),
        ("model: {name: broken.py:net}\nbaseline: {epochs: 1}\n", "boom"),
        ("baseline: {checkpoint: nothere.pt}\n", "nothere.pt: file not found"),
        ("baseline: {checkpoint: junk.pt}\n", "unreadable"),
        ("data: {name: fashion-mnist, root: /nonexistent}\n", "dataset-fashion-mnist"),
        ("baseline: {epochs: 1, lr: 1.0e+30}\n", "loss became"),
        ("experiments: [{name: a, precision: {train: fp7}}]\n", "unknown precision method 'fp7'"),
        ("experiments: [{name: a, quantize: {method: ptq, weight: {bits: 99}}}]\n", "experiments[0].quantize.weight"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, text, needle):
    (tmp_path / "broken.py").write_text("def net(**kw):\n    raise RuntimeError('boom')\n")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    (tmp_path / "r.yaml").write_text(text)
    p = effdnn("run", "r.yaml", "--out", "o", cwd=tmp_path)
    _one_clear_line(p, needle)
    assert not (tmp_path / "o" / "report.json").exists()


def test_missing_recipe_and_bad_report_folder(tmp_path):
    _one_clear_line(effdnn("run", str(tmp_path / "none.yaml")), "file not found")
    _one_clear_line(effdnn("report", str(tmp_path)), "report.json: not found")
    (tmp_path / "report.json").write_text("{\"baseline\": 1")
    _one_clear_line(effdnn("report", str(tmp_path)), "not valid JSON")


@pytest.mark.parametrize("args, needle", [
    (["run"], "Missing argument 'recipe'. (see: effdnn run --help)"),
    (["run", "r.yaml", "--bogus"], "No such option: --bogus"),
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["sensitivity", "r.yaml", "--calib-batches", "0"], "--calib-batches"),
])
def test_usage_errors_are_one_line_and_exit_code_2(args, needle):
    _one_clear_line(effdnn(*args), needle)


def test_user_code_calling_sys_exit_is_one_line(tmp_path):
    (tmp_path / "m.py").write_text("import sys\ndef net(**kw):\n    sys.exit(3)\n")
    (tmp_path / "r.yaml").write_text("model: {name: m.py:net}\nbaseline: {epochs: 1}\n")
    _one_clear_line(effdnn("run", "r.yaml", "--out", "o", cwd=tmp_path), "sys.exit(3)")


def test_internal_error_says_bug_and_where_the_traceback_is(tmp_path, monkeypatch, capsys):
    from effdnn import cli

    def broken(*a, **k):
        raise ZeroDivisionError("x")

    monkeypatch.setattr(cli, "_run", broken)
    (tmp_path / "r.yaml").write_text("name: x\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(tmp_path / "r.yaml")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1 and "a bug in effdnn" in err
    path = err.rsplit("traceback in ", 1)[1]
    assert "ZeroDivisionError" in open(path).read()


def test_run_report_and_methods(tmp_path):
    recipe = {"name": "tiny", "data": {"name": "synthetic", "kwargs": {"n_train": 128, "n_test": 64}},
              "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "baseline": {"epochs": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    p = effdnn("run", "r.yaml", "--out", "o", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "baseline" in p.stdout and (tmp_path / "o" / "report.json").is_file()
    (tmp_path / "o" / "report.md").unlink()
    p = effdnn("report", "o", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "o" / "report.md").is_file()
    p = effdnn("methods")
    assert p.returncode == 0 and "quantize" in p.stdout


from tests.test_bad_input import USER  # the user's data and model file of the bad-input table


# a few rows of tests/test_bad_input.py's table, through the real command (a subprocess)
@pytest.mark.parametrize("data_kind, model, needle", [
    ("float_labels", "ok", "train labels must be integer class indices, got torch.float32"),
    ("nan", "ok", "the train inputs hold NaN or Inf"),
    ("ok", "forward_fails", "model: its forward fails on the data (input (2, 1, 8, 8)): RuntimeError"),
])
def test_bad_user_data_and_models_are_one_line(tmp_path, data_kind, model, needle):
    (tmp_path / "d.py").write_text(USER)
    recipe = {"name": "bad", "data": {"name": "d.py:data", "kwargs": {"kind": data_kind}},
              "model": {"name": "d.py:net", "kwargs": {"kind": model}}, "baseline": {"epochs": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    p = effdnn("run", "r.yaml", "--out", "o", cwd=tmp_path)
    _one_clear_line(p, needle)
    assert not (tmp_path / "o" / "report.json").exists()

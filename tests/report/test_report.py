import pytest

from effdnn.errors import EffdnnError
from effdnn.report import markdown_table, pareto_front, render_report, validate_report


def _row(name, acc, size, energy):
    return {"name": name, "accuracy": acc, "accuracy_delta": 0.0, "size_bytes": size, "compression_ratio": 1.0,
            "params": 1, "macs": 1, "bitops": 1.0, "energy_pj": energy, "weight_sparsity": 0.0,
            "activation_sparsity": 0.0, "wall_time_s": 0.1}


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.9), (5, 0.8), (20, 0.85), (3, 0.5), (5, 0.7), (30, 0.95)]
    assert pareto_front(pts) == [3, 1, 0, 5]


def test_render_writes_markdown_and_plots(tmp_path):
    report = {"name": "t", "baseline": _row("baseline", 0.9, 4096, 2000.0),
              "experiments": [_row("small", 0.88, 1024, 500.0)]}
    files = render_report(report, tmp_path)
    assert [f.name for f in files] == ["report.md", "accuracy_vs_size.png", "accuracy_vs_energy.png"]
    assert all(f.stat().st_size > 1000 for f in files[1:])
    table = markdown_table(report)
    assert "| small | 0.8800 | +0.00 | 1.0 | 1.0x |" in table and "| baseline | 0.9000 |" in table


def test_validation_names_what_is_missing():
    bad = {"baseline": _row("baseline", 0.9, 1, 1), "experiments": [{"name": "x"}]}
    with pytest.raises(EffdnnError, match=r"experiments\[0\] lacks accuracy"):
        validate_report(bad)
    with pytest.raises(EffdnnError, match="not an effdnn report"):
        validate_report([1, 2])

"""report.json -> report.md (a table) and Pareto plots (accuracy against size and against energy)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EffdnnError
from .markdown import markdown_table, render_markdown
from .plots import pareto_front, plot_pareto

REQUIRED = ("name", "accuracy", "size_bytes", "compression_ratio", "params", "macs", "bitops", "energy_pj",
            "weight_sparsity", "activation_sparsity", "wall_time_s")
NUMERIC = REQUIRED[1:]


def validate_report(report: Any, where: str = "report.json") -> None:
    if not isinstance(report, dict) or "baseline" not in report or not isinstance(report.get("experiments"), list):
        raise EffdnnError(f"{where}: not an effdnn report (needs 'baseline' and 'experiments')")
    for i, row in enumerate([report["baseline"], *report["experiments"]]):
        label = "baseline" if i == 0 else f"experiments[{i - 1}]"
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise EffdnnError(f"{where}: {label} lacks {', '.join(missing)}")
        wrong = [k for k in NUMERIC if isinstance(row[k], bool) or not isinstance(row[k], (int, float))]
        if wrong:
            raise EffdnnError(f"{where}: {label}.{wrong[0]} must be a number, got {row[wrong[0]]!r}")


def render_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write report.md and the two Pareto plots next to report.json; returns the files written."""
    validate_report(report)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = plot_pareto(report, out)
    md = out / "report.md"
    md.write_text(render_markdown(report, [f.name for f in files]))
    return [md, *files]


def load_report(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise EffdnnError(f"{path}: not found (run `effdnn run` first, or the run did not complete)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EffdnnError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    validate_report(report, str(path))
    return report


__all__ = ["load_report", "markdown_table", "pareto_front", "plot_pareto", "render_report", "validate_report"]

"""The report as a Markdown table (also what the CLI prints)."""
from __future__ import annotations

from typing import Any

COLUMNS = [
    ("name", "experiment", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("accuracy_delta", "Δ pts", "{:+.2f}"),
    ("size_bytes", "size KiB", "{:.1f}"),
    ("compression_ratio", "ratio", "{:.1f}x"),
    ("macs", "MACs", "{:,}"),
    ("bitops", "bit-ops", "{:.3g}"),
    ("energy_pj", "energy nJ", "{:.1f}"),
    ("weight_sparsity", "w. sparsity", "{:.2f}"),
    ("activation_sparsity", "a. sparsity", "{:.2f}"),
    ("wall_time_s", "time s", "{:.1f}"),
]


def columns(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table's columns: accuracy, or for unlabelled text the embeddings' cosine against the baseline."""
    if report.get("metric") != "cosine":
        return COLUMNS
    cos = [("accuracy", "cosine mean", "{:.4f}"), ("cosine_min", "cosine min", "{:.4f}")]
    return [COLUMNS[0], *cos, *COLUMNS[2:]]


def _cell(key: str, fmt: str, row: dict[str, Any]) -> str:
    v = row.get(key)
    if v is None:
        return ""
    if key == "size_bytes":
        v = v / 1024
    elif key == "energy_pj":
        v = v / 1000
    elif key == "accuracy_delta":
        v = v * 100
    return fmt.format(v)


def markdown_table(report: dict[str, Any]) -> str:
    rows, cols = [report["baseline"], *report["experiments"]], columns(report)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, f, row) for k, _, f in cols) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    env = report.get("environment", {})
    parts = [
        f"# {report.get('name', 'effdnn report')}",
        "",
        ("Cosine of the mean-pooled sentence embeddings against the baseline's, on the test sentences"
         if report.get("metric") == "cosine" else "Accuracy on the test split") + "; size = deployed storage; energy per example (Horowitz 45 nm table).",
        "",
        markdown_table(report),
        "",
        f"Environment: torch {env.get('torch')}, {env.get('threads')} threads, device {env.get('device')}, "
        f"{env.get('platform')}. Total time {report.get('total_time_s', 0):.1f} s.",
        "",
    ]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"

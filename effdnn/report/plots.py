"""Pareto plots: accuracy against storage and against energy, the frontier drawn as a step line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost, higher accuracy), in order of cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(report: dict[str, Any], out: Path) -> list[Path]:
    rows = [report["baseline"], *report["experiments"]]
    files = []
    for key, label, scale, fname in (("size_bytes", "size (KiB)", 1 / 1024, "accuracy_vs_size.png"),
                                     ("energy_pj", "energy per example (nJ)", 1 / 1000, "accuracy_vs_energy.png")):
        pts = [(r[key] * scale, r["accuracy"]) for r in rows]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=3)
        for (x, y), r in zip(pts, rows):
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = [pts[i] for i in pareto_front(pts)]
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{report.get('name', '')}: accuracy vs {label.split(' (')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        files.append(out / fname)
    return files

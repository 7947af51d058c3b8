"""The ``effdnn`` command: run | demo | report | methods | formats. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import EffdnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="effdnn: make deep networks cheaper, and measure it.")
out_console = Console() if Console().is_terminal else Console(width=200)
err_console = Console(stderr=True)


def _print_table(report: dict) -> None:
    from .report.markdown import COLUMNS, _cell

    table = Table(title=report.get("name"))
    for _, head, _ in COLUMNS:
        table.add_column(head, justify="left" if head == "experiment" else "right")
    for row in [report["baseline"], *report["experiments"]]:
        table.add_row(*(_cell(k, f, row) for k, _, f in COLUMNS))
    out_console.print(table)


def _run(recipe_path: Path, out: Optional[Path], resume: bool) -> None:
    from .recipe import load_recipe
    from .runner import Runner

    recipe = load_recipe(recipe_path)
    runner = Runner(recipe, out, resume)
    try:
        report = runner.run()
    except KeyboardInterrupt:
        err_console.print("effdnn: interrupted; add --resume to continue from the last checkpoint")
        raise typer.Exit(130) from None
    _print_table(report)
    out_console.print(f"report: {runner.out / 'report.json'}, {runner.out / 'report.md'}")


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the recipe's `output`)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint and reuse finished experiments"),
) -> None:
    """Train the baseline, run every experiment of RECIPE, write report.json / report.md / plots."""
    _run(recipe, out, resume)


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: runs/demo)"),
    resume: bool = typer.Option(False, "--resume"),
) -> None:
    """Run the built-in recipe on scikit-learn's digits (no download)."""
    with resources.as_file(resources.files("effdnn") / "recipes" / "demo.yaml") as path:
        _run(path, out, resume)


@app.command()
def report(folder: Path = typer.Argument(..., help="a run's output folder")) -> None:
    """Re-render report.md and the plots from FOLDER/report.json."""
    from .report import load_report, render_report

    rep = load_report(folder)
    files = render_report(rep, folder)
    _print_table(rep)
    out_console.print("wrote " + ", ".join(str(f) for f in files))


@app.command()
def methods() -> None:
    """List the registered techniques, by recipe block."""
    from . import techniques  # noqa: F401
    from .registry import REGISTRIES

    table = Table(title="effdnn techniques")
    for col in ("block", "name", "summary"):
        table.add_column(col)
    for block, reg in REGISTRIES.items():
        if not reg.names():
            table.add_row(block, "-", "not available yet")
        for m in reg.methods():
            table.add_row(block, m.name, m.summary)
    out_console.print(table)


@app.command()
def formats() -> None:
    """List the number formats a quantize block's ``format:`` can name."""
    from .formats import describe_formats

    table = Table(title="effdnn number formats")
    for col in ("format", "class", "what"):
        table.add_column(col)
    for name, cls, doc in describe_formats():
        table.add_row(name, cls, doc)
    out_console.print(table)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv)  # standalone: usage errors print their own message and exit with code 2
    except EffdnnError as e:
        err_console.print(f"effdnn: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

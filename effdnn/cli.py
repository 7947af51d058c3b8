"""The ``effdnn`` command: run | demo | report | sensitivity | methods | formats. Bad input: one line on stderr, exit code 2."""
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
    from .report.markdown import _cell, columns

    table = Table(title=report.get("name"))
    cols = columns(report)
    for _, head, _ in cols:
        table.add_column(head, justify="left" if head == "experiment" else "right")
    for row in [report["baseline"], *report["experiments"]]:
        table.add_row(*(_cell(k, f, row) for k, _, f in cols))
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
    """Run the built-in recipe on scikit-learn's digits (no download), then, when transformers is
    installed, the small text recipe (a random BERT; its report in OUT-text)."""
    with resources.as_file(resources.files("effdnn") / "recipes" / "demo.yaml") as path:
        _run(path, out, resume)
    try:
        from transformers import BertModel  # noqa: F401  (optional: the text part needs it)
    except Exception as e:  # noqa: BLE001  (not installed, or not importable here: one line, no text part)
        out_console.print(f"text demo: skipped (transformers does not import: {type(e).__name__}: {' '.join(str(e).split())[:120]})")
        return
    with resources.as_file(resources.files("effdnn") / "recipes" / "demo_text.yaml") as path:
        _run(path, out.with_name(out.name + "-text") if out is not None else None, resume)


@app.command()
def report(folder: Path = typer.Argument(..., help="a run's output folder")) -> None:
    """Re-render report.md and the plots from FOLDER/report.json."""
    from .report import load_report, render_report

    rep = load_report(folder)
    files = render_report(rep, folder)
    _print_table(rep)
    out_console.print("wrote " + ", ".join(str(f) for f in files))


def _parse_bits(text: str) -> list[int]:
    try:
        widths = sorted({int(b) for b in text.split(",") if b.strip()}, reverse=True)
    except ValueError:
        widths = []
    if not widths or not all(2 <= b <= 16 for b in widths):
        raise EffdnnError(f"sensitivity: --bits {text!r}: give bit-widths in 2..16 separated by commas, e.g. 8,4,3,2")
    return widths


def _sensitivity_table(rows: list[dict], widths: list[int], weights_only: bool, title: str) -> Table:
    """One row per layer, one column per width: the accuracy loss in points with that layer quantized alone."""
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("params", justify="right")
    for b in widths:
        table.add_column(f"W{b}" if weights_only else f"W{b}A{b}", justify="right")
    for name in dict.fromkeys(r["layer"] for r in rows):
        loss = {r["bits"]: r["loss_pts"] for r in rows if r["layer"] == name}
        params = next(r["params"] for r in rows if r["layer"] == name)
        table.add_row(name, f"{params:,}", *(f"{loss[b]:+.2f}" for b in widths))
    return table


@app.command()
def sensitivity(
    recipe: Path = typer.Argument(..., help="recipe YAML file (its data, model and baseline blocks)"),
    bits: str = typer.Option("8,4,3,2", "--bits", help="widths to try, comma-separated (2..16)"),
    budget_kib: Optional[float] = typer.Option(None, "--budget-kib", help="pick per-layer widths whose weights fit this size"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the rows (and the picked widths) to this JSON file"),
    weights_only: bool = typer.Option(False, "--weights-only", help="quantize each layer's weights only, not its input"),
    calib_batches: int = typer.Option(16, "--calib-batches", min=1, help="training batches for calibration"),
) -> None:
    """Per-layer accuracy loss at each width (each layer quantized alone with PTQ) on RECIPE's trained
    baseline; with --budget-kib, the mixed widths to paste into a quantize block's ``overrides``."""
    import json
    import os

    import yaml

    from .utils.paths import check_output_file
    from .sensitivity import as_overrides, pick_widths, quantizable_layers, sweep
    from .recipe import load_recipe
    from .runner import Runner
    from .train import evaluate

    widths = _parse_bits(bits)
    if budget_kib is not None and not 0 < budget_kib < float("inf"):
        raise EffdnnError(f"sensitivity: --budget-kib must be a positive number, got {budget_kib}")
    if out is not None:
        check_output_file(out, "sensitivity: --out")  # before the sweep, not after it
    runner = Runner(load_recipe(recipe))
    model, base_row = runner.load_baseline()  # trained once, then reused from the baseline cache
    model.eval()
    if budget_kib is not None:
        narrowest = sum(m.weight.numel() for _, m in quantizable_layers(model)) * min(widths)
        if narrowest > budget_kib * 8192:
            raise EffdnnError(f"sensitivity: --budget-kib {budget_kib:g} is below the narrowest configuration "
                              f"({narrowest / 8192:.2f} KiB of weights at {min(widths)} bits)")
    test = runner.data.test
    calib = runner.ctx().calib_loader(calib_batches)
    rows = sweep(model, lambda m: evaluate(m, test, batch_size=512), calib, widths, act=not weights_only)

    out_console.print(_sensitivity_table(rows, widths, weights_only, f"{runner.recipe.name}: accuracy loss (points) "
                                         f"with one layer quantized (baseline {base_row['accuracy']:.4f})"))
    choice = None
    if budget_kib is not None:
        choice = pick_widths(rows, budget_kib * 8192)
        params = {r["layer"]: r["params"] for r in rows}
        used = sum(params[n] * b for n, b in choice.items()) / 8192
        block = yaml.safe_dump({"overrides": as_overrides(choice, act=not weights_only)}, default_flow_style=None,
                               sort_keys=False)
        out_console.print(f"# weights {used:.2f} KiB <= budget {budget_kib:g} KiB (scales and biases not counted);\n"
                          f"# paste into a quantize block (ptq / qat / lsq / pact): overrides beat keep_8bit\n{block}",
                          markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({"recipe": runner.recipe.name, "baseline_accuracy": base_row["accuracy"],
                                   "bits": widths, "act": not weights_only, "budget_kib": budget_kib,
                                   "widths": choice, "rows": rows}, indent=2))
        os.replace(tmp, out)
        out_console.print(f"rows: {out}")


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


def _bug_report(exc: BaseException) -> Path:
    """Write the traceback of an internal error to a file; its path."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"effdnn-bug-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def _fail(message: str, code: int) -> None:
    err_console.print(f"effdnn: error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """The command line: bad input (an EffdnnError, a usage error) is one line and exit code 2; an
    internal error is one line saying it is a bug and where its traceback was written, exit code 1."""
    from typer import Abort

    try:  # typer carries its own copy of click
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover (older typer: click itself)
        from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[no-redef]

    try:
        code = app(args=argv, standalone_mode=False, prog_name="effdnn")
    except EffdnnError as e:
        _fail(str(e), 2)
    except NoArgsIsHelpError:  # the help is already printed
        sys.exit(0)
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "effdnn"
        _fail(f"{' '.join(e.format_message().split())} (see: {where} --help)", 2)
    except Abort:
        _fail("interrupted", 130)
    except SystemExit as e:  # code the recipe names (a model or data function) that called sys.exit
        if e.code in (0, None):
            raise
        _fail(f"the recipe's code called sys.exit({e.code!r})", 2)
    except Exception as e:  # a bug in effdnn: one line, the details in a file
        _fail(f"internal error (a bug in effdnn, not your input): {type(e).__name__}: {e}; "
              f"traceback in {_bug_report(e)}", 1)
    else:
        if isinstance(code, int) and code:
            sys.exit(code)


if __name__ == "__main__":
    main()

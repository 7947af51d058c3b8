"""The layering of docs/design.md holds: every import of effdnn (module-level or inside a function)
goes to a lower layer or stays in its own package, and module-level imports form no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "effdnn"

# lowest first; a package may import its own modules and anything in a lower layer, nothing beside or above
LAYERS: list[set[str]] = [
    {"errors", "hooks", "registry", "train_spec", "transform", "utils"},  # core: what every block may use
    {"formats"},
    {"models", "cost"},
    {"prune"},  # masked layers and saliencies
    {"quant", "lowp"},  # a pruned layer quantizes into its masked quantized class (prune.sparse)
    {"compress", "export"},  # build on the techniques
    {"data", "train"},  # the engine
    {"context", "recipe", "composition", "techniques", "runner", "api", "sensitivity", "report", "cli", "__init__",
     "recipes"},  # recipes: the demo's own model and data files
]
TOP = len(LAYERS) - 1
OPEN = {0, TOP}  # layers whose packages may import each other (the cycle test still applies)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"effdnn.{package} is in no layer of tests/test_layering.py: place it")


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = ("effdnn", *f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(module: str, path: Path, top_level_only: bool) -> set[str]:
    """The effdnn modules ``module`` imports (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - node.level + 1]
                target = ".".join(prefix + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in [target, *names] if n.startswith("effdnn"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("effdnn"))
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_package_has_a_layer() -> None:
    for module in MODULES:
        _layer(_package(module))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    me = _package(module)
    mine = _layer(me)
    for target in sorted(_imports(module, MODULES[module], top_level_only=False)):
        resolved = _resolve(target)
        if resolved is None:
            continue
        other = _package(resolved)
        if other == me or (mine in OPEN and _layer(other) == mine):
            continue
        assert _layer(other) < mine, (
            f"{module} (layer {mine}, {me}) imports {resolved} (layer {_layer(other)}, {other}): "
            "a layer may only import lower layers")


def test_no_import_cycles() -> None:
    graph = {m: {r for t in _imports(m, p, top_level_only=True) if (r := _resolve(t)) and r != m}
             for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how Python packages load: not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)

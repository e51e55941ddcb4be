"""The package's layers, read from its source (ast): no import cycles, and nothing imports upwards.

    core      errors, inputs, model_sampling, schedulers, samplers/, guidance, trajectory, engine, models/,
              inversion/, editing/, latent_files, pixels
    bundled   the shapes model (data, detector, tokenizer, training, weights); testing: tiny seeded models
    analysis  analysis/ (metrics, evaluate, grid, running, runners, sweeps, store, executors, plots, piebench/)
    lab       lab/ (widgets, cli, args, bench, report, teaching, toy, images, comfyui_flow, comfy)

A module may import its own layer and the layers above it in this list. The core may read the bundled
model's location (the `unsampling_lab.bundled` package itself, a path) to load it by default, and never
imports matplotlib, pandas, ipywidgets or IPython, even lazily inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unsampling_lab"
RANK = {"core": 0, "bundled": 1, "analysis": 2, "lab": 3, "top": 4}
LAYER_OF_PART = {"bundled": "bundled", "testing": "bundled", "analysis": "analysis", "lab": "lab",
                 "__init__": "top", "__main__": "top"}
HEAVY = {"matplotlib", "pandas", "ipywidgets", "IPython"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    return LAYER_OF_PART.get(parts[1], "core")


ALL_NAMES: set[str] = set()


def _imports(module: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function bodies included),
    except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found.update(subs & ALL_NAMES)
            if subs - ALL_NAMES:  # a name defined in `target` itself, not a submodule of it
                found.add(target)
    return found


MODULES = _modules()
ALL_NAMES = set(MODULES)
GRAPH = {m: {t for t in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}


def test_the_walk_sees_the_package():
    assert {"unsampling_lab.engine", "unsampling_lab.analysis.metrics", "unsampling_lab.lab.widgets",
            "unsampling_lab.bundled.shapes", "unsampling_lab.testing"} <= set(MODULES)
    assert "unsampling_lab.trajectory" in GRAPH["unsampling_lab.engine"]  # a known edge, so the walk is live


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    mine = RANK[_layer(module)]
    bad = sorted(t for t in GRAPH[module] if RANK[_layer(t)] > mine and not (
        _layer(module) == "core" and t == "unsampling_lab.bundled"))
    assert not bad, f"{module} ({_layer(module)}) imports the upper layer(s) {bad}"
    if _layer(module) == "core":
        heavy = sorted({t.split(".")[0] for t in _imports(module, MODULES[module])} & HEAVY)
        assert not heavy, f"core module {module} imports {heavy}; plotting, tables and widgets belong in analysis/ or lab/"


def test_the_layer_list_is_the_packages():
    """The layer list above and the one in unsampling_lab/__init__.py are the same text, and every core
    module it names exists."""
    ours = __doc__.split("\n\n")[1]
    init = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    assert ours in init, "the layer list in unsampling_lab/__init__.py differs from tests/test_layout.py's"
    core = " ".join(line.split(None, 1)[1] if line.startswith("    core") else line for line in ours.splitlines()[:2])
    for name in (n.strip(" ,/") for n in core.split()):
        assert f"unsampling_lab.{name}" in MODULES, f"the layer list names {name}, which is not a module"
    for module in MODULES:
        if module.count(".") == 1 and _layer(module) == "core":
            assert module.split(".")[1] in core, f"core module {module} is missing from the layer list"


def _imported_names(path: Path, target: str) -> set[str]:
    """The names a file imports from module `target` (`from ..engine import x`, `from .. import engine`)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            where = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            if where == target:
                names.update(a.name for a in node.names)
    return names


def test_inversion_uses_only_the_engines_public_names():
    """inversion/ builds on the engine through its public names, imported at module top; engine.py never
    imports inversion/ (ul.resample dispatches an Inversion, not engine.resample)."""
    files = sorted((PACKAGE / "inversion").glob("*.py"))
    assert len(files) >= 5
    seen: set[str] = set()
    for path in files:
        for target in ("unsampling_lab.engine", "unsampling_lab.inputs"):
            names = _imported_names(path, target)
            private = sorted(n for n in names if n.startswith("_"))
            assert not private, f"{path.name} imports private names {private} of {target}"
            seen |= names
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module in ("engine", "inputs") and node.level == 2:
                    raise AssertionError(f"{path.name}: {fn.name} imports from ..{node.module} inside the function")
        for node in ast.walk(tree):  # engine._x through a module import
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine":
                assert not node.attr.startswith("_"), f"{path.name} uses engine.{node.attr}"
    assert {"run_sampler", "run_unsample", "finish_unsample", "wrap", "keep_unmasked"} <= seen  # the walk is live
    engine_imports = GRAPH["unsampling_lab.engine"]
    assert not any(m.startswith("unsampling_lab.inversion") for m in engine_imports), engine_imports


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph, ignoring a package's own __init__
    (which re-exports its children) as seen from inside that package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def edges(v: str) -> list[str]:
        return [w for w in GRAPH[v] if not (MODULES[w].name == "__init__.py" and v.startswith(w + "."))]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.slow  # a subprocess
def test_light_import():
    """`import unsampling_lab` loads neither diffusers nor the plotting, table or widget libraries."""
    import subprocess
    import sys

    code = ("import sys, unsampling_lab; heavy = [m for m in ('diffusers', 'matplotlib', 'pandas', 'ipywidgets') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout + done.stderr

"""No import cycles in seglab: between its modules, nor between its parts (subpackages and top-level modules).

Imports are read from the source with ``ast``: every ``import`` and ``from ... import`` anywhere in a module,
inside functions and ``if TYPE_CHECKING:`` blocks too, so a lazy import does not hide a cycle. An import points
at the deepest seglab module it names (``from seglab.metrics import functional`` at ``seglab.metrics.functional``,
``from seglab.metrics import ConfusionMatrix`` at ``seglab.metrics``) and at the packages Python initialises on
the way there (``seglab.engine`` for ``seglab.engine.state``), except ``seglab`` itself (its public names load
lazily) and the importer's own packages, which are already initialising when it runs. No exception is needed
for a package ``__init__`` importing its own submodules: it is an edge like any other, and no submodule imports
its package back. Names that ``importlib.import_module`` loads on attribute access (``seglab.__getattr__``,
``seglab.uncertainty.__getattr__``) are not imports here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seglab"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that running ``name`` (source ``path``) may import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            named += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    targets = set()
    for target in named:
        while target and target not in modules:  # e.g. "import seglab.x.y" of a name inside seglab.x
            target = target.rpartition(".")[0]
        if target:
            targets.update([target, *ancestors(target)])
    return targets - {name, *ancestors(name), PACKAGE.name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def part(name: str) -> str:
    """The part of seglab a module belongs to: ``seglab.engine.train`` -> ``seglab.engine``."""
    return ".".join(name.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def explain(cycle: list[str], graph: dict[str, set[str]]) -> str:
    """The module imports behind each step of a cycle of parts."""
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        edges = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if part(m) == a and part(t) == b)
        steps.append(f"{a} -> {b}: {', '.join(edges) or a + ' -> ' + b}")
    return "\n".join(steps)


def test_the_import_graph_sees_lazy_relative_and_package_imports(tmp_path):
    """The graph on a made-up package with a lazy cycle, a relative import and a package ``__init__``."""
    root = tmp_path / "seglab"
    (root / "engine").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "checkpoint.py": "def load():\n    from seglab.engine.export import Onnx\n",
        "engine/__init__.py": "from .export import Onnx\n",
        "engine/export.py": "import torch\nfrom seglab import checkpoint\nOnnx = 1\n",
        "engine/train.py": "from seglab.engine import export\nfrom seglab.checkpoint import load\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    graph = import_graph(root)
    assert graph == {
        "seglab": set(),
        "seglab.checkpoint": {"seglab.engine", "seglab.engine.export"},
        "seglab.engine": {"seglab.engine.export"},
        "seglab.engine.export": {"seglab.checkpoint"},
        "seglab.engine.train": {"seglab.engine.export", "seglab.checkpoint"},
    }
    assert find_cycle(graph) == [
        "seglab.checkpoint",
        "seglab.engine",
        "seglab.engine.export",
        "seglab.checkpoint",
    ]
    del graph["seglab.checkpoint"]
    assert find_cycle(graph) is None


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 50 and "seglab.models.archs" in graph["seglab.models.factory"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_parts():
    """Subpackages and top-level modules form layers: e.g. the engine uses uncertainty, checkpoint and models,
    and none of those reaches back into the engine, not even lazily."""
    graph = import_graph()
    parts: dict[str, set[str]] = {}
    for name, targets in graph.items():
        parts.setdefault(part(name), set()).update(part(t) for t in targets if part(t) != part(name))
    cycle = find_cycle(parts)
    assert cycle is None, "import cycle between parts of seglab:\n" + explain(cycle, graph)


def importers(graph: dict[str, set[str]], module: str) -> set[str]:
    """The modules whose imports reach ``module``."""
    return {name for name, targets in graph.items() if module in targets}


def test_only_the_inference_package_imports_the_tiling_code():
    """One home for inference: tiled or whole, every consumer turns an image into probabilities through
    ``seglab.inference``; overlap-tile inference is its detail, not a second entry point."""
    graph = import_graph()
    assert "seglab.inference.tiling" in graph and "seglab.models.tiling" not in graph
    assert "seglab.inference.image" in importers(graph, "seglab.inference.tiling")
    outside = sorted(m for m in importers(graph, "seglab.inference.tiling") if part(m) != "seglab.inference")
    assert not outside, f"{outside} import seglab.inference.tiling: import seglab.inference instead"


def test_only_the_cli_demo_and_public_api_import_the_predict_command():
    """``seglab.engine.predict`` is the command (files in, files out); evaluate, serve, the report and the
    callbacks use ``seglab.inference``. The public API (``seglab.predict``) loads it by name, lazily."""
    graph = import_graph()
    users = importers(graph, "seglab.engine.predict")
    assert {"seglab.cli", "seglab.demo"} <= users
    others = sorted(users - {"seglab.cli", "seglab.demo", "seglab"})
    assert not others, f"{others} import the predict command: import seglab.inference instead"


def test_inference_sits_between_the_models_and_the_engine():
    """The inference layer uses models, data and uncertainty, and is used by the engine, serve and the reports:
    never the other way round."""
    graph = import_graph()
    parts = {part(t) for m, ts in graph.items() if part(m) == "seglab.inference" for t in ts}
    assert {"seglab.uncertainty", "seglab.data"} <= parts
    above = {"seglab.engine", "seglab.serve", "seglab.reports", "seglab.bench", "seglab.demo", "seglab.cli"}
    assert not parts & above, f"seglab.inference imports {sorted(parts & above)}, a layer above it"
    for user in ("seglab.engine", "seglab.serve", "seglab.reports"):
        assert any(part(m) == user for m in importers(graph, "seglab.inference")), user

"""Imports run one way: src/digitflow (pure PyTorch) <- tracking, reporting <- tasks <- flows, and no
first-party module imports itself back through others (no import circle, counting imports inside
functions and under TYPE_CHECKING, which hide a circle at run time but not from a reader)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
FORBIDDEN = {"prefect", "mlflow", "flows", "tasks", "tracking", "reporting"}
# The layers above the core, each with what it must never import (a layer above it).
UPWARD = {"tracking": {"tasks", "flows"}, "reporting": {"tasks", "flows"}, "tasks": {"flows"}}
_DYNAMIC = {"import_module", "__import__"}


def _top(module: str) -> str:
    return module.split(".")[0]


def imported_modules(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, name)`` for every absolute import in ``source``, wherever it stands (in functions and
    ``if TYPE_CHECKING:`` blocks too); ``from a.b import c`` gives ``a.b.c`` (a module, or a name in ``a.b``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(source: str, filename: str = "<string>", forbidden: set[str] = FORBIDDEN) -> list[str]:
    """``file:line: module`` for every import of a forbidden top-level package in ``source``.

    Covers ``import x``, ``import x.y as z``, ``from x.y import z`` (absolute only: a relative import
    stays inside the package) and ``importlib.import_module("x")`` / ``__import__("x")`` with a literal.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.stmt | ast.expr):  # imports are statements, import_module() calls expressions
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in _DYNAMIC and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, name) for name in names if _top(name) in forbidden]
    return [f"{filename}:{line}: {name}" for line, name in sorted(found)]


def test_checker_catches_forbidden_imports():
    source = "\n".join(
        [
            "import os",
            "import mlflow",
            "import numpy, mlflow.pytorch as mp",
            "from prefect import flow",
            "from tasks.train import train_task",
            "def f():",
            "    import flows.cli",
            "    importlib.import_module('prefect.artifacts')",
            "try:",
            "    __import__('mlflow')",
            "except ImportError:",
            "    pass",
        ]
    )
    assert forbidden_imports(source, "x.py") == [
        "x.py:2: mlflow",
        "x.py:3: mlflow.pytorch",
        "x.py:4: prefect",
        "x.py:5: tasks.train",
        "x.py:7: flows.cli",
        "x.py:8: prefect.artifacts",
        "x.py:10: mlflow",
    ]


def test_checker_ignores_lookalikes():
    source = "\n".join(
        [
            "import mlflowlike",
            "import prefect_helpers",
            "from . import tasks",
            "from .flows import x",
            "from digitflow import tasks",
            "from digitflow.data.tasks import y",
            "x = 'import mlflow'",
            "# import mlflow",
        ]
    )
    assert forbidden_imports(source) == []


def test_core_package_imports_no_orchestration_layer():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 10, f"expected the digitflow sources under {SRC}"
    problems = [p for f in files for p in forbidden_imports(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert not problems, "src/ must not import prefect, mlflow, tracking, reporting, flows or tasks:\n" + "\n".join(
        problems
    )


def test_no_layer_imports_one_above_it():
    problems = []
    for layer, above in UPWARD.items():
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, f"expected the {layer} package under {ROOT}"
        for f in files:
            problems += forbidden_imports(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)), above)
    assert not problems, "an import runs upward (tasks never import flows; tracking, reporting neither):\n" + (
        "\n".join(problems)
    )


def _module_files() -> dict[str, Path]:
    """Every first-party module by dotted name: digitflow.* (under src/), tracking, reporting, tasks, flows."""
    files = {f: f.relative_to(SRC) for f in SRC.rglob("*.py")}
    for top in ("tracking", "reporting", "tasks", "flows"):
        files.update({f: f.relative_to(ROOT) for f in (ROOT / top).rglob("*.py")})
    modules = {}
    for f, rel in files.items():
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = f
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports: ``from a import b`` counts as ``a.b`` where that is a
    module, else as ``a`` (the package's ``__init__``, which the import runs)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, imported in imported_modules(path.read_text(encoding="utf-8"), str(path)):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a module's own packages are already being imported when it runs: not an edge of a circle
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circle_finder_finds_a_hidden_circle():
    graph = {"a.engine": {"a.loop", "a.adversarial"}, "a.adversarial": {"a.engine"}, "a.loop": set()}
    assert circles(graph) == [["a.adversarial", "a.engine"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circles():
    modules = _module_files()
    assert "digitflow.training.step" in modules, "expected the first-party modules"
    found = circles(import_graph(modules))
    assert not found, "import circles (make the chain one-way):\n" + "\n".join(" <-> ".join(c) for c in found)

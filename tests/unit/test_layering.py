"""The core package never imports the orchestration/tracking layers (Prefect, MLflow, flows, tasks)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
FORBIDDEN = {"prefect", "mlflow", "flows", "tasks"}
_DYNAMIC = {"import_module", "__import__"}


def _top(module: str) -> str:
    return module.split(".")[0]


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
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
        found += [(node.lineno, name) for name in names if _top(name) in FORBIDDEN]
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
    assert not problems, "src/ must not import prefect, mlflow, flows or tasks:\n" + "\n".join(problems)

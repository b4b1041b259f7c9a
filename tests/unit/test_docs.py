"""The README stays short and its links resolve; the generated CLI reference holds every ``digitflow run`` option.

The site itself is built by ``make lint`` / ``make docs`` (``mkdocs build --strict``); these checks need no build.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HOOK = ROOT / "docs" / "hooks" / "reference.py"
MAX_README_LINES = 200
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), the Markdown links of the README


def load_hook() -> ModuleType:
    """docs/hooks/reference.py, imported by path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_reference_hook", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    return load_hook()


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move the rest into docs/"


def test_readme_relative_links_point_at_files():
    targets = LINK.findall(README.read_text(encoding="utf-8"))
    relative = [t for t in targets if not re.match(r"^[a-z][a-z+.-]*:", t) and not t.startswith("#")]
    assert relative, "the README links into docs/"
    missing = [t for t in relative if not (ROOT / t.split("#", 1)[0]).exists()]
    assert missing == []


def test_cli_reference_has_every_run_option(hook):
    from flows.cli import build_parser

    commands = {name: sub for name, _, sub in hook.subcommands(build_parser())}
    options = [opt for action in commands["run"]._actions for opt in action.option_strings]
    assert "--train" in options
    assert "--epochs" in options
    rendered = hook.render_cli()
    assert [opt for opt in options if opt not in rendered] == []
    for name in commands:
        assert f"## digitflow {name}\n" in rendered


def test_config_reference_has_every_config_class(hook):
    import dataclasses

    import digitflow.config

    classes = hook.config_classes(digitflow.config)
    assert digitflow.config.RunConfig in classes
    assert digitflow.config.GanConfig in classes
    rendered = hook.render_config()
    for cls in classes:
        assert f"## {cls.__name__}\n" in rendered
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` |" in rendered


def test_markers_are_replaced(hook):
    page = f"# Command line\n\n{hook.CLI_MARKER}\n"
    rendered = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert hook.CLI_MARKER not in rendered
    assert "usage: digitflow run" in rendered

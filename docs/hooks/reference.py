"""MkDocs hook: the reference pages, generated from the code so that they cannot drift from it.

``docs/reference/cli.md`` holds the line :data:`CLI_MARKER`; it becomes the ``--help`` of ``digitflow`` and of
each of its commands, from the parser itself (``flows.cli.build_parser``), whatever commands it has.
``docs/reference/config.md`` holds :data:`CONFIG_MARKER`; it becomes a section per dataclass that
``digitflow.config`` exports, in source order: the class's docstring and a table of its fields (name, type,
default, and the ``help`` of the field's metadata). mkdocs.yml names this file under ``hooks:``;
tests/unit/test_docs.py imports it by path. It imports the checkout it lives in, never an installed copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- reference:cli -->"
CONFIG_MARKER = "<!-- reference:config -->"
HELP_COLUMNS = "100"  # argparse wraps --help to $COLUMNS: fixed, so the page is the same on every machine

ROOT = Path(__file__).resolve().parents[2]  # the repository: flows/ and src/digitflow/ of this checkout
for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@contextmanager
def _columns(width: str) -> Iterator[None]:
    """$COLUMNS set to ``width`` while argparse formats help (it reads it through shutil.get_terminal_size)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line summary, parser) of each command of ``parser``, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, summaries.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _fenced(text: str) -> str:
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def render_cli() -> str:
    """``digitflow --help`` and every ``digitflow COMMAND --help``, each under a ``## digitflow ...`` heading."""
    from flows.cli import build_parser

    parser = build_parser()
    with _columns(HELP_COLUMNS):
        parts = [f"## {parser.prog}\n\n{_fenced(parser.format_help())}"]
        for name, summary, sub in subcommands(parser):
            parts.append(f"## {parser.prog} {name}\n\n{summary}\n\n{_fenced(sub.format_help())}")
    return "\n\n".join(parts) + "\n"


def config_classes(module: Any) -> list[type]:
    """The dataclasses ``module`` exports (``__all__``, else its public names), in source order: by defining
    module (in the order they first appear in ``module``), then by line."""
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    classes: list[type] = []
    for name in names:
        value = getattr(module, name)
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value not in classes:
            classes.append(value)
    modules = list(dict.fromkeys(cls.__module__ for cls in classes))

    def line(cls: type) -> int:
        try:
            return inspect.getsourcelines(cls)[1]
        except (OSError, TypeError):
            return 0

    return sorted(classes, key=lambda cls: (modules.index(cls.__module__), line(cls)))


def _value(value: Any) -> str:
    """A default as code: a dataclass instance shows only the fields that differ from its class's defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            base = type(value)()
        except TypeError:  # a required field: show it all
            return repr(value)
        changed = [
            f"{f.name}={_value(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(base, f.name)
        ]
        return f"{type(value).__name__}({', '.join(changed)})"
    return repr(value)


def _type(f: dataclasses.Field[Any]) -> str:
    """The annotation as written (a string under ``from __future__ import annotations``)."""
    return f.type if isinstance(f.type, str) else inspect.formatannotation(f.type)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return _value(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _value(f.default_factory())
    return "(required)"


def _cell(text: str, code: bool = False) -> str:
    """One table cell on one line; a pipe outside a code span is escaped (inside one, Markdown keeps it)."""
    text = " ".join(str(text).split())
    if code and text:
        return f"`{text}`"
    return text.replace("|", "\\|")


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc)  # Sphinx roles (:mod:`x`) as code


def render_config() -> str:
    """A section per config dataclass: its docstring, then a table of its fields."""
    config = importlib.import_module("digitflow.config")
    parts = []
    for cls in config_classes(config):
        rows = [
            f"| {_cell(f.name, code=True)} | {_cell(_type(f), code=True)} | {_cell(_default(f), code=True)} "
            f"| {_cell(f.metadata.get('help', ''))} |"
            for f in dataclasses.fields(cls)
        ]
        table = "\n".join(["| field | type | default | help |", "|---|---|---|---|", *rows])
        parts.append(f"## {cls.__name__}\n\n`{cls.__module__}.{cls.__qualname__}`\n\n{_docstring(cls)}\n\n{table}")
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the generated reference where a page has a marker line."""
    for marker, render in ((CLI_MARKER, render_cli), (CONFIG_MARKER, render_config)):
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown

"""MkDocs hook: the reference pages, generated from the code so that they cannot drift from it.

``docs/reference/cli.md`` holds the line :data:`CLI_MARKER`; it becomes the ``--help`` of ``digitflow`` and of
each of its commands, from the parser itself (``flows.cli.build_parser``), whatever commands it has.
``docs/reference/config.md`` holds :data:`CONFIG_MARKER`; it becomes a section per dataclass that
``digitflow.config`` exports, in source order: the class's docstring and a table of its fields (name, type,
default, help). A field's help is the ``help`` of its metadata if it has one, else its comment in the source
(``src/digitflow/config/schema.py``): the trailing ``# comment`` on its line, else the comment lines directly
above it, read with :mod:`ast` and :mod:`tokenize` (:func:`field_comments`).
``docs/reference/options.md`` holds :data:`OPTIONS_MARKER`; it becomes a table per flow of its parameters
(:data:`FLOWS`, from the option tables of ``digitflow.config.options``): name, CLI flag, type, default, help.
mkdocs.yml names this file under ``hooks:``; tests/unit/test_docs.py imports it by path. It imports the
checkout it lives in, never an installed copy, and nothing of it that loads torch, Prefect or MLflow.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import io
import os
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digitflow.config.options import Option

CLI_MARKER = "<!-- reference:cli -->"
CONFIG_MARKER = "<!-- reference:config -->"
OPTIONS_MARKER = "<!-- reference:options -->"
# (flow name, the command that runs it, its option table in digitflow.config.options, the flow's function)
FLOWS = (
    ("digitflow-pipeline", "digitflow run", "RUN_OPTIONS", "flows/pipeline.py:pipeline"),
    ("digitflow-gan", "digitflow gan", "GAN_OPTIONS", "flows/gan.py:gan_pipeline"),
    ("digitflow-sweep", "digitflow sweep", "SWEEP_OPTIONS", "flows/sweep.py:sweep"),
    ("digitflow-promote", "digitflow promote", "PROMOTE_OPTIONS", "flows/promote.py:promote"),
    ("digitflow-predict", "digitflow predict", "PREDICT_OPTIONS", "flows/predict.py:predict"),
)
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


_MARKDOWN_ESCAPES = str.maketrans({"|": "\\|", "*": "\\*", "_": "\\_", "<": "&lt;", ">": "&gt;"})


def _cell(text: str, code: bool = False) -> str:
    """One table cell on one line. In a code span Markdown keeps every character (a pipe included); in
    text, pipes, emphasis marks and angle brackets (``lenet-<hash>.pt`` is no HTML tag) are escaped."""
    text = " ".join(str(text).split())
    if code and text:
        return f"`{text}`"
    return text.translate(_MARKDOWN_ESCAPES)


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc)  # Sphinx roles (:mod:`x`) as code


_NOT_HELP = re.compile(r"(type:|noqa\b|pragma\b|fmt:)")  # tool directives, not a field's meaning


@functools.cache
def field_comments(path: Path) -> dict[str, dict[str, str]]:
    """``{class name: {field name: comment}}`` for the classes of the Python file ``path``, read from its
    source without importing it. A field is an annotated assignment in a class body; its comment is the
    trailing ``# comment`` on its line(s), else the run of comment lines directly above it, joined."""
    source = path.read_text(encoding="utf-8")
    trailing: dict[int, str] = {}  # line -> a comment that follows code on that line
    own_line: dict[int, str] = {}  # line -> a comment that is the whole line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if _NOT_HELP.match(text):
                continue
            on_its_own = not token.line[: token.start[1]].strip()
            (own_line if on_its_own else trailing)[token.start[0]] = text
    comments: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = comments.setdefault(node.name, {})
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            end = statement.end_lineno or statement.lineno
            after = [trailing[line] for line in range(statement.lineno, end + 1) if line in trailing]
            above: list[str] = []
            line = statement.lineno - 1
            while line in own_line:
                above.insert(0, own_line[line])
                line -= 1
            text = " ".join(after or above)
            if text:
                fields[statement.target.id] = text
    return comments


def field_help(cls: type, f: dataclasses.Field[Any]) -> str:
    """A field's help: the ``help`` of its metadata, else its comment in the class's source file."""
    if f.metadata.get("help"):
        return str(f.metadata["help"])
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # a class without a source file
        return ""
    if path is None:
        return ""
    return field_comments(Path(path)).get(cls.__name__, {}).get(f.name, "")


def render_config() -> str:
    """A section per config dataclass: its docstring, then a table of its fields."""
    config = importlib.import_module("digitflow.config")
    parts = []
    for cls in config_classes(config):
        rows = [
            f"| {_cell(f.name, code=True)} | {_cell(_type(f), code=True)} | {_cell(_default(f), code=True)} "
            f"| {_cell(field_help(cls, f))} |"
            for f in dataclasses.fields(cls)
        ]
        table = "\n".join(["| field | type | default | help |", "|---|---|---|---|", *rows])
        parts.append(f"## {cls.__name__}\n\n`{cls.__module__}.{cls.__qualname__}`\n\n{_docstring(cls)}\n\n{table}")
    return "\n\n".join(parts) + "\n"


def annotation(value: Any) -> str:
    """A type as it is written: ``int | None``, ``list[str] | None``, ``Literal['script', 'trace']``."""
    if value is None or value is type(None):
        return "None"
    if value is Ellipsis:
        return "..."
    origin, args = typing.get_origin(value), typing.get_args(value)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(annotation(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).removeprefix("typing.")
        return f"{name}[{', '.join(annotation(arg) for arg in args)}]" if args else name
    if value is Any:
        return "Any"
    if isinstance(value, type):
        return value.__name__
    return str(value).removeprefix("typing.")


def _flags(option: Option) -> str:
    """The option's CLI flag(s): ``--amp`` / ``--no-amp`` for a toggle, its ``off`` flag beside it."""
    flag = option.cli_flag
    if flag is None:
        return "(none: a flow parameter only)"
    flags = [flag]
    if option.kind == "toggle":
        flags.append("--no-" + flag.removeprefix("--"))
    if option.off is not None:
        flags.append(option.off[0])
    return " / ".join(f"`{f}`" for f in flags)


def render_options() -> str:
    """A section per flow of :data:`FLOWS`: a table of its parameters, in the order of its option table."""
    options = importlib.import_module("digitflow.config.options")
    parts = []
    for flow, command, table_name, function in FLOWS:
        table = getattr(options, table_name)
        rows = [
            f"| {_cell(o.name, code=True)} | {_flags(o)} | {_cell(annotation(o.annotation), code=True)} "
            f"| {'required' if o.default is options.REQUIRED else _cell(repr(o.default), code=True)} "
            f"| {_cell(o.help)} |"
            for o in table
        ]
        lines = ["| parameter | CLI flag | type | default | help |", "|---|---|---|---|---|", *rows]
        intro = (
            f"The parameters of `{function}`, from `digitflow.config.options.{table_name}`; "
            f"`{command}` takes the same options."
        )
        parts.append(f"## {flow}\n\n{intro}\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the generated reference where a page has a marker line."""
    for marker, render in ((CLI_MARKER, render_cli), (CONFIG_MARKER, render_config), (OPTIONS_MARKER, render_options)):
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown

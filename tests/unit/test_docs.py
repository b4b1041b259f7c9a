"""The README stays short and its links resolve; the generated reference pages hold what the code defines: every
``digitflow run`` option, every config field with the comment that explains it, every flow parameter.

The site itself is built by ``make lint`` / ``make docs`` (``mkdocs build --strict``); these checks need no build.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
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


def sections(rendered: str) -> dict[str, str]:
    """``{heading: body}`` of the ``## heading`` sections of a generated page."""
    return {part.split("\n", 1)[0]: part for part in f"\n{rendered}".split("\n## ")[1:]}


def test_config_reference_takes_each_fields_help_from_its_comment_in_the_source(hook):
    import dataclasses

    import digitflow.config
    from digitflow.config import schema

    comments = hook.field_comments(Path(schema.__file__))
    assert "cache_dir" in comments["DataConfig"]  # a comment on the field's line
    assert "num_images" in comments["RobustnessConfig"]  # comment lines above the field
    by_class = sections(hook.render_config())
    for cls in hook.config_classes(digitflow.config):
        for field in dataclasses.fields(cls):
            row = next(line for line in by_class[cls.__name__].splitlines() if line.startswith(f"| `{field.name}` |"))
            has_help = not row.endswith("|  |")
            assert has_help == (field.name in comments.get(cls.__name__, {})), (cls.__name__, field.name)


def test_field_comments_reads_the_trailing_comment_else_the_block_above(hook, tmp_path):
    source = tmp_path / "fields.py"
    source.write_text(
        "import dataclasses\n"
        "from dataclasses import dataclass, field\n\n\n"
        "# not a field's comment\n"
        "@dataclass\n"
        "class Settings:\n"
        '    """A docstring."""\n\n'
        "    plain: int = 1\n"
        "    trailing: int = 2  # on its line\n"
        "    # two lines\n"
        "    # above it\n"
        "    above: int = 3\n"
        "    # above, but the trailing one wins\n"
        "    both: int = 4  # trailing\n"
        "    # a comment, then a blank line\n\n"
        "    after_blank: int = 5\n"
        "    long: list[int] = field(\n"
        "        default_factory=list\n"
        "    )  # after a call over several lines\n"
        "    ignored: int = 6  # type: ignore[assignment]\n"
        "    not_a_field = 7  # no annotation\n",
        encoding="utf-8",
    )
    assert hook.field_comments(source) == {
        "Settings": {
            "trailing": "on its line",
            "above": "two lines above it",
            "both": "trailing",
            "long": "after a call over several lines",
        }
    }


def test_options_reference_lists_every_parameter_of_both_flows(hook):
    from digitflow.config import options

    by_flow = sections(hook.render_options())
    assert [flow for flow, *_ in hook.FLOWS] == [
        "digitflow-pipeline",
        "digitflow-gan",
        "digitflow-sweep",
        "digitflow-promote",
        "digitflow-predict",
    ]
    for flow, command, table_name, function in hook.FLOWS:
        table = getattr(options, table_name)
        assert table in (
            options.RUN_OPTIONS,
            options.GAN_OPTIONS,
            options.SWEEP_OPTIONS,
            options.PROMOTE_OPTIONS,
            options.PREDICT_OPTIONS,
        )
        page = by_flow[flow]
        assert f"`{command}`" in page
        for option in table:
            assert f"| `{option.name}` |" in page, (flow, option.name)
            if option.cli_flag is not None:
                assert f"`{option.cli_flag}`" in page, (flow, option.cli_flag)
        # the flow the section names is the one that takes these parameters (read, not imported: no Prefect)
        path, name = function.split(":")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f'@flow(name="{flow}"' in source
        assert f"@takes_options({table_name})\ndef {name}(" in source
    assert "| `adv_relative_step` | `--adv-relative-step` | `float | None` | `None` |" in by_flow["digitflow-pipeline"]
    assert "| `target` | `--target` / `--no-target` | `list[str] | None` | `None` |" in by_flow["digitflow-pipeline"]
    assert "| `export_mode` | `--export-mode` | `Literal['script', 'trace']` |" in by_flow["digitflow-pipeline"]
    assert "| `amp` | `--amp` / `--no-amp` | `bool | None` |" in by_flow["digitflow-gan"]


def test_annotation_is_rendered_as_written(hook):
    from typing import Any, Literal

    assert hook.annotation(int) == "int"
    assert hook.annotation(int | None) == "int | None"
    assert hook.annotation(list[str] | None) == "list[str] | None"
    assert hook.annotation(dict[str, dict[str, Any]] | None) == "dict[str, dict[str, Any]] | None"
    assert hook.annotation(Literal["script", "trace"]) == "Literal['script', 'trace']"
    assert hook.annotation(Literal["dann"] | None) == "Literal['dann'] | None"  # a typing.Union, not a UnionType
    assert hook.annotation(tuple[str, ...]) == "tuple[str, ...]"


def test_markers_are_replaced(hook):
    page = f"# Reference\n\n{hook.CLI_MARKER}\n\n{hook.CONFIG_MARKER}\n\n{hook.OPTIONS_MARKER}\n"
    rendered = hook.on_page_markdown(page, page=None, config=None, files=None)
    for marker in (hook.CLI_MARKER, hook.CONFIG_MARKER, hook.OPTIONS_MARKER):
        assert marker not in rendered
    assert "usage: digitflow run" in rendered
    assert "## RunConfig\n" in rendered
    assert "## digitflow-pipeline\n" in rendered


def test_the_hook_renders_without_torch_prefect_or_mlflow():
    """The reference is read from plain data and source text: the site builds in a second, without a GPU stack."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hook', {str(HOOK)!r})\n"
        "hook = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(hook)\n"
        "hook.render_cli(), hook.render_config(), hook.render_options()\n"
        "print(sorted(m for m in ('torch', 'prefect', 'mlflow', 'pydantic') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_reference_pages_hold_their_marker(hook):
    reference = ROOT / "docs" / "reference"
    for page, marker in (
        ("cli.md", hook.CLI_MARKER),
        ("config.md", hook.CONFIG_MARKER),
        ("options.md", hook.OPTIONS_MARKER),
    ):
        assert marker in (reference / page).read_text(encoding="utf-8").splitlines(), page

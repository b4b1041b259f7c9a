"""The ``digitflow`` command (also ``python -m flows``).

Each subcommand is a module of this package with ``add_parser(commands)`` and ``execute(args, argv,
parser)``; options they share live in :mod:`flows.cli.options`. A command runs its flow in-process
(Prefect's ephemeral mode when no server is configured) and prints a summary. Bad input ends with one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows.cli import compare, gan, promote, replay, run, sweep
from flows.cli.options import OneLineErrorParser, setup_environment

# one module per subcommand, in the order `digitflow --help` lists them
COMMANDS = (run, sweep, gan, promote, compare, replay)


def build_parser() -> argparse.ArgumentParser:
    """The ``digitflow`` argument parser (``digitflow COMMAND --help`` lists each command's options)."""
    parser = OneLineErrorParser(
        prog="digitflow", description="Workflow-orchestrated digit models: Prefect flows, MLflow tracking."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(execute=command.execute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``digitflow`` console script."""
    setup_environment()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.execute(args, argv, parser)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``digitflow`` command (also ``python -m flows``).

Each subcommand is a module of this package with ``add_parser(commands)`` and ``execute(args, argv,
parser)``; options they share live in :mod:`flows.cli.options`. A command runs its flow in-process
(Prefect's ephemeral mode when no server is configured) and prints a summary. Bad input ends with one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Sequence

from flows.cli import compare, gan, predict, promote, replay, run, startup, sweep
from flows.cli.options import OneLineErrorParser, setup_environment

# one module per subcommand, in the order `digitflow --help` lists them
COMMANDS = (run, sweep, gan, promote, predict, compare, replay)


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


def command() -> None:
    """The ``digitflow`` console script (and ``python -m flows``): :func:`main`, then an exit that skips
    the interpreter's teardown.

    Tearing down torch, MLflow and Prefect module by module took 2.5 s after every run on the 2-core
    machine, longer than some steps of the run. The exit hook registered here, before any library
    registers its own, runs after all of them (Prefect's log and event drains run earlier still, at
    thread shutdown), flushes the standard streams and ends the process with main's exit status.
    """
    startup.pause()  # the imports without the garbage collector, until the flow's are done (flows/cli/startup.py)
    status = [1]  # main's exit status; 1 if it raised (the traceback is printed before the hooks run)

    def exit_now() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status[0])

    atexit.register(exit_now)
    try:
        status[0] = main()
    except SystemExit as exc:  # argparse's errors and --help, a command's parser.exit
        status[0] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except KeyboardInterrupt:  # before a flow started (a flow's Ctrl-C is handled in flows/interrupt.py)
        status[0] = 130
        raise
    sys.exit(status[0])


if __name__ == "__main__":
    command()

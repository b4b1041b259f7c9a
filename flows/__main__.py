"""``python -m flows`` is the ``digitflow`` command."""

from flows.cli import command

command()

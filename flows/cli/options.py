"""Options and plumbing every ``digitflow`` command shares: argparse options from the option tables of
:mod:`digitflow.config.options` and back to flow parameters, parsing helpers, and running a flow
in-process with one-line errors and Ctrl-C handling."""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from digitflow.config.options import REQUIRED, Option
from digitflow.errors import CheckpointError, ConfigError, DataError, DigitflowError
from flows.cli.startup import imports_done
from flows.interrupt import RunSignals
from flows.local_server import use_local_server
from reporting.logs import quiet_expected_errors
from tracking.credentials import CredentialsError, load_credentials

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and where to read more, without the usage
    block (which, for ``digitflow run``, is a dozen lines in front of the one that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def literal(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"[0.9, 0.99]"`` -> [0.9, 0.99], ``"True"`` -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` options -> a dict of Python literals (ConfigError, one line, if malformed)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r} (e.g. {option} lr=0.01)")
        out[key.strip()] = literal(value.strip())
    return out


def param_groups(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Repeated ``PREFIX:KEY=VALUE`` options -> ``{prefix: {key: value}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for item in items or ():
        prefix, sep, rest = item.partition(":")
        if not sep or not prefix:
            raise ConfigError(f"--param-group takes PREFIX:KEY=VALUE, got {item!r} (e.g. classifier:lr=0.001)")
        groups.setdefault(prefix, {}).update(key_values([rest], "--param-group PREFIX:"))
    return groups


def dataset_spec(text: str) -> str:
    """argparse type: validate a dataset spec early, so a typo fails before anything starts."""
    from digitflow.data import parse_spec  # torchvision's dataset classes: only when an option is parsed

    try:
        return str(parse_spec(text))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add ``options`` (:mod:`digitflow.config.options`) to ``parser``, each under its group's heading,
    with its flag, type, choices, default and help; an option's ``dest`` is its flow parameter's name."""
    groups: dict[str, Any] = {g.title: g for g in parser._action_groups if g.title}  # a command's own, by title
    for option in options:
        flag = option.cli_flag
        if flag is None:
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group) if option.group else parser
        group = groups[option.group]
        common: dict[str, Any] = {"dest": option.name, "help": option.help}
        if option.kind == "flag":
            group.add_argument(flag, action="store_true", **common)
        elif option.kind == "toggle":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=option.default, **common)
        elif option.kind == "repeat":
            group.add_argument(
                flag, action="append", type=option.value_type, default=None, metavar=option.metavar, **common
            )
        elif option.kind in ("pairs", "groups"):
            group.add_argument(flag, action="append", default=None, metavar=option.metavar, **common)
        else:
            group.add_argument(
                flag,
                type=dataset_spec if option.spec else option.value_type,
                nargs=option.nargs,
                choices=option.choices,
                default=None if option.default is REQUIRED else option.default,
                metavar=option.metavar,
                **common,
            )
        if option.off is not None:
            off_flag, off_help = option.off
            group.add_argument(off_flag, dest=option.name, action="store_const", const=[], help=off_help)


def flow_params(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """Parsed options -> the flow's keyword arguments, one per option (``KEY=VALUE`` lists become dicts;
    a one-line ConfigError if one is malformed)."""
    params: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.name, option.default)
        if option.kind == "pairs":
            value = key_values(value, str(option.cli_flag)) or None
        elif option.kind == "groups":
            value = param_groups(value) or None
        params[option.name] = value
    return params


def run_flow(
    argv: Sequence[str],
    epochs: int,
    load: Callable[[], Callable[[], Any]],
    *,
    finished: str | Callable[[Any], str],
    summary_lines: Callable[[Any], list[str]],
    where: Callable[[], str] | None = None,
    interrupted: str | None = None,
) -> int:
    """Run a flow in this process: ``load()`` imports the flow (Prefect and MLflow load only once the
    options are valid) and returns it bound to its parameters; it runs against the configured Prefect
    server, else the local one (flows/local_server.py), whose start overlaps those imports. Expected
    errors end as one line on stderr; Ctrl-C / SIGTERM as one line saying how to ``--resume``
    (flows/interrupt.py; ``where()`` says how far the flow got, by default the epochs of its training;
    ``interrupted`` replaces the whole line for a flow with nothing to resume), exit 130 / 143. Prints
    ``finished`` (or ``finished(summary)``) and the summary's lines at the end."""
    signals = RunSignals(argv, epochs, where=where, line=interrupted)
    try:
        with signals:
            server = use_local_server()  # before the flow's imports: Prefect reads its API url at import
            if server is None:  # a configured server: say in one line if it refuses us
                exit_unless_prefect_lets_us_in()
            quiet_expected_errors(full_in_log=False)  # the CLI prints an expected error in full, last
            signals.replace_prefect_sigterm_handler()
            flow = load()
            imports_done()  # the console script's collector, paused for the imports, back on
            if server is not None:
                server.wait_ready()
            # Heartbeats serve a server's crash automation (the team setup's); the local server has none.
            with without_flow_heartbeats() if server is not None else contextlib.nullcontext():
                summary = flow()
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DigitflowError as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BaseException as exc:
        if not signals.interrupted(exc):
            raise
        signals.report()
        return signals.exit_code
    title = finished(summary) if callable(finished) else finished
    print("\n".join(["", title, *("  " + line for line in summary_lines(summary))]))
    return 0


@contextlib.contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Run the flows called inside without Prefect's flow-run heartbeats.

    Prefect 3.9's heartbeat thread sleeps a whole second at a time and the flow joins it as it ends, so every
    run it watches lasts to the next whole second: a 0.3-s flow took 1.07 s with it, 0.38 s without, and
    ``digitflow predict`` on 10,000 images 2.07 s against about 1.5 s (docs/measurements.md#predictions).
    Heartbeats let a server that has an automation for it mark a run as crashed when its process died: a
    flow run by a worker (a deployment's) keeps them, and so does a command run against a configured server
    (:func:`run_flow` turns them off on the local server only). Imports Prefect's settings: call it once the
    options are known to be valid.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def exit_unless_prefect_lets_us_in() -> None:
    """A one-line DigitflowError when the configured Prefect server cannot be reached or refuses this
    process's credentials (flows/prefect_access.py)."""
    from flows.local_server import configured_api_url
    from flows.prefect_access import server_problem

    url = configured_api_url()
    problem = server_problem(url) if url else None
    if problem:
        raise DigitflowError(problem)


def setup_environment() -> None:
    """Process-wide settings every command wants before Prefect is imported: the credentials of
    ``$DIGITFLOW_CREDENTIALS`` (tracking/credentials.py; a file that cannot be read is one line)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        load_credentials()
    except CredentialsError as exc:
        sys.exit(f"digitflow: error: {exc}")

"""The checks every ``digitflow`` command that runs a flow makes before it starts anything: the
experiment name, the output folder, the data files of an ``--offline`` run, and the tracking server.

A bad option ends in a second with one line, before Prefect or MLflow start and before any run exists
in MLflow. The server check imports MLflow, so it comes after the options are known to be valid.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from flows.cli.options import EXIT_FAILED


def check_before_start(
    *, experiment: str, output_dir: str, offline: bool, data_dir: str, specs: Iterable[str | None]
) -> None:
    """Raise a one-line DigitflowError unless the run can start: a usable experiment name and output
    folder and, for an ``--offline`` run, every file of ``specs`` present and intact (verified once per
    process, so the flow reuses the check)."""
    from digitflow.data import fetch
    from digitflow.params.run import check_experiment, check_output_dir

    if offline:  # nothing to download: the files must be there, so say now if one is not
        for spec in specs:
            if spec:
                fetch(spec, data_dir, offline=True)
    check_experiment(experiment)
    check_output_dir(output_dir)


def exit_unless_tracking_server_answers(parser: argparse.ArgumentParser) -> None:
    """Exit with one line if ``MLFLOW_TRACKING_URI`` names a tracking server that does not answer."""
    from tracking.store import server_problem, tracking_uri  # MLflow: only once the options are valid

    problem = server_problem(tracking_uri())
    if problem:
        parser.exit(EXIT_FAILED, f"digitflow: error: {problem}\n")

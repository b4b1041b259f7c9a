"""``digitflow compare``: pipeline runs side by side, from the MLflow store runs log to."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from digitflow.errors import DigitflowError
from flows.cli.options import EXIT_BAD_INPUT

NAME = "compare"
EPILOG = """\
examples:
  digitflow compare                                       # every pipeline run of the experiment digitflow, newest first
  digitflow compare --last 5 --sort test/accuracy
  digitflow compare --filter "params.\\`train.epochs\\` = '6' and metrics.\\`cross/usps/accuracy\\` > 0.9"
  digitflow compare --format markdown > runs.md
  digitflow compare --last 3 --plot curves.png --plot-metric train/loss   # training curves overlaid
  digitflow compare --plot accuracy.png                    # test/accuracy, a bar per run
  digitflow compare --sweep RUN_ID --sort test/accuracy    # a sweep's trials (digitflow sweep prints RUN_ID)
the store: $MLFLOW_TRACKING_URI, else mlflow/mlflow.db (as for digitflow run); the MLflow UI's compare
view (select runs, then Compare) shows the same metric and param names.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow compare`` and its options."""
    compare = commands.add_parser(
        NAME,
        help="print pipeline runs side by side: params, accuracy, export, model version",
        description="One row per pipeline run (MLflow parent run): run name, start time, status, key params, "
        "held-out and cross-domain accuracy, export verification, the registered model version and its aliases.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--experiment", default="digitflow", help="MLflow experiment (default digitflow)")
    compare.add_argument(
        "--filter",
        metavar="EXPR",
        help='MLflow search filter, e.g. "metrics.`test/accuracy` > 0.99" or "params.`data.train` = \'mnist:train\'"',
    )
    compare.add_argument(
        "--sweep", metavar="RUN_ID", help="the trials of a sweep (the child runs of its MLflow run) instead of the runs"
    )
    compare.add_argument("--last", type=int, metavar="N", help="only the N newest runs (after --filter)")
    compare.add_argument(
        "--sort", metavar="COLUMN", help="order by a column, highest first (e.g. test/accuracy; default: newest first)"
    )
    compare.add_argument("--ascending", action="store_true", help="with --sort: lowest first")
    compare.add_argument(
        "--format", choices=["table", "csv", "markdown"], default="table", help="output format (default table)"
    )
    compare.add_argument("--plot", metavar="FILE", help="also save a PNG plot of the runs shown")
    compare.add_argument(
        "--plot-metric",
        default="test/accuracy",
        metavar="KEY",
        help="what --plot shows: a figure across runs (test/accuracy, cross/usps/accuracy, ...), or "
        "train/loss, train/accuracy, train/lr: the training curves overlaid (default test/accuracy)",
    )
    return compare


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Print the table (and save the plot)."""
    if args.last is not None and args.last < 1:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: --last takes a number of runs >= 1, got {args.last}\n")
    import mlflow  # after the options are checked: importing MLflow takes a second or two

    from tracking.comparison import plot_runs, render, runs_table
    from tracking.store import server_problem, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: no MLflow store at {uri} (no run has logged there yet)\n")
    problem = server_problem(uri)
    if problem:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {problem}\n")
    mlflow.set_tracking_uri(uri)
    try:
        table = runs_table(args.experiment, args.filter, args.last, args.sort, args.ascending, parent_run_id=args.sweep)
        print(render(table, args.format), end="" if args.format == "csv" else "\n")
        if args.plot:
            path = plot_runs(table, args.plot_metric, args.plot)
            print(f"plot: {path}", file=sys.stderr)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    return 0

"""``digitflow promote``: move the ``champion`` alias to a pipeline run's model if it is better."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from digitflow.config import PromotionConfig
from digitflow.config.options import PROMOTE_OPTIONS
from flows.cli.options import EXIT_BAD_INPUT, add_options, flow_params, run_flow

NAME = "promote"
EPILOG = """\
examples:
  digitflow promote --run-id 84874e90f851477db9c50f2b59f077d5      # the MLflow run a `digitflow run` printed
  digitflow promote --flow-run-id 0f6c...                           # the Prefect flow run of a pipeline run
  digitflow promote --run-id ID --margin 0.005 --figure test/accuracy
the decision (promoted, or kept: the champion stays) and the figures both ways are printed, tagged on the
model version (promotion.*) and kept as a Prefect markdown artifact; the deployment evaluate-and-promote
(prefect.yaml) runs the same flow after every completed mnist-nightly run.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow promote`` and its options."""
    p = PromotionConfig()
    promote = commands.add_parser(
        NAME,
        help="make a pipeline run's model the champion if it beats the current one",
        description=f"Compare the model version a pipeline run registered with the version that holds the alias "
        f"{p.champion_alias!r} of {p.registered_model_name}, on held-out and cross-domain accuracy, and move the "
        "alias only if it is better and its export verification passed. The first model becomes the champion.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(promote, PROMOTE_OPTIONS)
    return promote


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Run :func:`flows.promote.promote` in this process (:func:`run_flow`) and print its decision."""
    if (args.run_id is None) == (args.flow_run_id is None):
        parser.exit(EXIT_BAD_INPUT, "digitflow: error: promote needs one of --run-id ID and --flow-run-id ID\n")
    if args.margin < 0:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: --margin must be >= 0, got {args.margin:g}\n")
    if not args.alias.strip():
        parser.exit(EXIT_BAD_INPUT, "digitflow: error: --alias is empty\n")
    params: dict[str, Any] = flow_params(args, PROMOTE_OPTIONS)

    def load() -> Callable[[], Any]:
        from flows.promote import promote  # imports Prefect and MLflow: only once the options are valid

        return functools.partial(promote, **params)

    return run_flow(
        argv,
        0,
        load,
        finished=lambda outcome: f"digitflow promote: {outcome.decision.word}",
        summary_lines=lambda outcome: outcome.lines(),
        interrupted="digitflow: interrupted; the champion is whatever the alias says (see the model's tags)",
    )

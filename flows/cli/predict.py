"""``digitflow predict``: an exported model scores a dataset spec; a CSV row per image (the flow
``digitflow-predict``, flows/predict.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from digitflow.config.options import PREDICT_OPTIONS
from digitflow.errors import ConfigError, DataError, DigitflowError
from flows.cli.checks import exit_unless_tracking_server_answers
from flows.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    add_options,
    exit_unless_prefect_lets_us_in,
    flow_params,
    without_flow_heartbeats,
)

NAME = "predict"
EPILOG = """\
examples:
  digitflow predict --input folder:scans                    # the champion: models:/digitflow-lenet@champion
  digitflow predict --model models:/digitflow-lenet@candidate --input csv:test.csv --output predictions.csv
  digitflow predict --model models:/digitflow-lenet/3 --input 'folder:photos?invert=yes'
  digitflow predict --model outputs/exports/RUN_ID/lenet.pt --input mnist:test --data-dir ../shared/data
the model carries its class names and the framing its inputs need (digitflow run exports them), so nothing
else is looked up. predictions.csv: image (file path, CSV row, index), label, confidence, true_label (when
the input has labels), p_<class>; a csv: input also gets Kaggle's ImageId,Label (<stem>-submission.csv).
one MLflow run (experiment digitflow-predict): the model, the input's digest, predict/class_<k>_count,
predict/accuracy when the input has labels.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow predict`` and its options."""
    predict = commands.add_parser(
        NAME,
        help="score images with an exported model: a CSV row per image (and a Kaggle submission)",
        description="Load a registered model (by alias or version), a run's model or an exported file, score "
        "every image of a dataset spec (a folder, a CSV with or without labels, IDX, a registered dataset) "
        "and write the predictions: one row per image, with each class's probability.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(predict, PREDICT_OPTIONS)
    return predict


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check the options, then run :func:`flows.predict.predict` in this process and print its summary."""
    params: dict[str, Any] = flow_params(args, PREDICT_OPTIONS)
    if params["input"] is None:
        parser.exit(EXIT_BAD_INPUT, "digitflow: error: predict needs --input SPEC: the images to score\n")
    try:
        check_before_predicting(params)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    exit_unless_tracking_server_answers(parser)  # the run is logged, whatever the model's source
    try:
        from flows.local_server import use_local_server

        server = use_local_server()  # before Prefect is imported, which reads its API url then
        if server is None:  # a configured server: say in one line if it refuses us
            exit_unless_prefect_lets_us_in()
        from flows.predict import predict  # imports Prefect and MLflow: only once the options are valid
        from reporting.logs import quiet_expected_errors

        quiet_expected_errors(full_in_log=False)
        if server is not None:
            server.wait_ready()
        with without_flow_heartbeats():  # up to a second of every run, for a run this process waits for
            summary = predict(**params)
    except (ConfigError, DataError) as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DigitflowError as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("digitflow: interrupted; the output files are written whole or not at all", file=sys.stderr)
        return 130
    print("\n".join(["", "digitflow predict finished", *("  " + line for line in summary.lines())]))
    return 0


def check_before_predicting(params: dict[str, Any]) -> None:
    """A one-line DigitflowError, before anything starts, for an unusable option: a batch size under 1, an
    output file that cannot be written, a local model file that is not there, an input whose files are not
    there (an own spec's; a registered dataset's with --offline)."""
    from pathlib import Path

    from digitflow.data import fetch, parse_spec
    from digitflow.data.own import source_files
    from digitflow.params.run import check_experiment, default_data_dir
    from digitflow.prediction.output import check_writable, default_submission
    from tracking.models import is_mlflow_uri, model_file

    if params["batch_size"] < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {params['batch_size']}")
    check_experiment(params["experiment"])
    spec = parse_spec(params["input"])
    submission = params["submission"] or (default_submission(params["output"]) if spec.name == "csv" else None)
    check_writable(params["output"], "--output")
    if submission:
        check_writable(submission, "--submission")
    if not is_mlflow_uri(params["model"]):
        model_file(Path(params["model"]), params["model"])
    if spec.is_own:
        source_files(spec)
    elif params["offline"]:
        fetch(spec, params["data_dir"] or default_data_dir(), offline=True)

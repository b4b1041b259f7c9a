"""``digitflow predict``: an exported model scores a dataset spec; a CSV row per image (the flow
``digitflow-predict``, flows/predict.py)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from digitflow.config.options import PREDICT_OPTIONS
from digitflow.errors import ConfigError, DigitflowError
from flows.cli.checks import exit_unless_tracking_server_answers
from flows.cli.options import EXIT_BAD_INPUT, add_options, flow_params, run_flow

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
    """Check the options, then run :func:`flows.predict.predict` in this process (:func:`run_flow`)."""
    params: dict[str, Any] = flow_params(args, PREDICT_OPTIONS)
    if params["input"] is None:
        parser.exit(EXIT_BAD_INPUT, "digitflow: error: predict needs --input SPEC: the images to score\n")
    try:
        check_before_predicting(params)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    exit_unless_tracking_server_answers(parser)  # the run is logged, whatever the model's source

    def load() -> Callable[[], Any]:
        from flows.predict import predict  # imports Prefect and MLflow: only once the options are valid

        return functools.partial(predict, **params)

    return run_flow(
        argv,
        0,
        load,
        finished="digitflow predict finished",
        summary_lines=lambda s: s.lines(),
        interrupted="digitflow: interrupted; the output files are written whole or not at all",
    )


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

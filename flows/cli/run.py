"""``digitflow run``: the classifier pipeline (data -> train -> evaluate -> cross-domain test -> export)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from digitflow.config import DATASET_FAMILIES
from digitflow.config.options import RUN_OPTIONS
from digitflow.errors import DigitflowError
from flows.cli.checks import check_before_start, exit_unless_tracking_server_answers
from flows.cli.options import EXIT_BAD_INPUT, add_options, flow_params, run_flow

NAME = "run"
EPILOG = """\
dataset specs: NAME:SPLIT[START:STOP] with NAME in {datasets} and SPLIT train or test;
  bounds are indices or percentages: mnist:train, mnist:test[:8000], mnist:test[8000:], usps:test[:50%]
your own files: idx:DIR (IDX pair), folder:DIR (a sub-folder per class), csv:FILE (Kaggle's layout),
  e.g. 'folder:scans?invert=yes[:80%]'; without --test they hold out a seeded 10% (docs/data.md)
examples:
  digitflow run --epochs 3
  DIGITFLOW_DATA_DIR=../shared/data digitflow run --train 'mnist:test[:8000]' --test 'mnist:test[8000:]' --offline
  digitflow run --optimizer AdamW --opt lr=1e-3 --opt weight_decay=0.01 --scheduler OneCycleLR --sched max_lr=0.01
  digitflow run --param-group classifier:lr=0.001      # a separate learning rate for the classifier head
  digitflow run --train 'mnist:test[:8000]' --adapt dann --adapt-target 'usps:test[:1000]' --target 'usps:test[1000:]'
  digitflow run --adv-train pgd --adv-eps 0.1 --attack pgd --epsilons 0 0.1 0.2 0.3   # adversarial training
results: MLflow (make ui; the summary prints the exact command and link),
  Prefect (prefect server start, or artifacts in the run)
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow run`` and its options (``digitflow run --help`` lists them)."""
    run = commands.add_parser(
        NAME,
        help="train, evaluate, test across domains and export, tracked in MLflow",
        description="Run the pipeline: data -> train -> evaluate -> cross-domain test -> export. "
        "Every stage is a Prefect task with its own MLflow child run under one parent run.",
        epilog=EPILOG.format(datasets=", ".join(sorted(DATASET_FAMILIES))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(run, RUN_OPTIONS)
    return run


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options -> keyword arguments of :func:`flows.pipeline.pipeline` (one per option)."""
    return flow_params(args, RUN_OPTIONS)


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check every option, then run :func:`flows.pipeline.pipeline` in this process."""
    from digitflow.export.exporters import prestart_verifier
    from digitflow.params.run import build_config  # torch: only once the options parse
    from digitflow.training.data_parallel import check_data_parallel

    # The export's verifier imports torch (3-3.5 s of one core) while this process imports the rest; started
    # later, its imports ran into the first epoch on a warm run, whose start-up is shorter than that.
    prestart_verifier()
    try:
        params = flow_parameters(args)
        # Check every option now, not minutes later inside the flow (and without a failed run in MLflow).
        config = build_config(**params)
        data = config.data
        check_before_start(
            experiment=args.experiment,
            output_dir=config.output_dir,
            offline=data.offline,
            data_dir=data.data_dir,
            specs=(data.train, data.test, *data.targets, config.adapt.target),
        )
        check_data_parallel(config, args.nproc)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    exit_unless_tracking_server_answers(parser)

    def load() -> Callable[[], Any]:
        from flows.pipeline import pipeline  # imports Prefect and MLflow: only once the options are valid

        return functools.partial(pipeline, **params)

    return run_flow(
        argv,
        config.train.epochs,
        load,
        finished="digitflow run finished",
        summary_lines=lambda s: s.lines(),
    )

"""``digitflow gan``: train a GAN on digits, judge what it generates with a classifier, export the generator."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from digitflow.config.options import GAN_OPTIONS
from digitflow.errors import DigitflowError
from flows.cli.checks import check_before_start
from flows.cli.options import EXIT_BAD_INPUT, add_options, flow_params, run_flow

NAME = "gan"
EPILOG = """\
examples:
  DIGITFLOW_DATA_DIR=../shared/data digitflow gan --train 'mnist:test[:8000]' --offline
  digitflow gan --arch mlp --epochs 80
  digitflow gan --judge models:/digitflow-lenet@candidate      # judge with the registered classifier
  digitflow gan --lr 1e-4 --opt betas='[0.5, 0.999]' --ema-decay 0.999
what is measured (per evaluation epoch and at the end; MLflow experiment digitflow-gan):
  gan/fid        Frechet distance between the judge's penultimate-layer features of N held-out real
                 images and N generated ones; gan/fid_floor the same for N training images, so every
                 FID has its floor beside it (gan/fid_ratio = fid / floor)
  gan/coverage   classes receiving at least 2% of the generated samples, of 10
  gan/entropy    of the predicted-class histogram, nats (ln 10 = 2.303 at most); gan/confidence: mean max softmax
  the run is tagged gan.collapse=true when the final coverage is under 5, or the discriminator's loss
  stayed at its minimum for a whole epoch
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow gan`` and its options (``digitflow gan --help`` lists them)."""
    gan = commands.add_parser(
        NAME,
        help="train a GAN on digits, judge its samples (FID, class coverage), export the generator",
        description="Run the GAN flow: data -> judge (a classifier) -> train the GAN, judged every epoch -> "
        "export the generator. Every stage is a Prefect task with its own MLflow child run under one parent run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(gan, GAN_OPTIONS)
    return gan


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check every option, then run :func:`flows.gan.gan_pipeline` in this process."""
    try:
        params = flow_params(args, GAN_OPTIONS)
        from digitflow.params.gan import build_gan_config

        config = build_gan_config(**params)
        data = config.data
        check_before_start(
            experiment=args.experiment,
            output_dir=config.output_dir,
            offline=data.offline,
            data_dir=data.data_dir,
            specs=(data.train, data.test),
        )
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")

    def load() -> Callable[[], Any]:
        from flows.gan import gan_pipeline  # imports Prefect and MLflow: only once the options are valid

        return functools.partial(gan_pipeline, **params)

    return run_flow(
        argv,
        config.train.epochs,
        load,
        finished="digitflow gan finished",
        summary_lines=lambda s: s.lines(),
    )

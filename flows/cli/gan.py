"""``digitflow gan``: train a GAN on digits, judge what it generates with a classifier, export the generator."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from digitflow.config import (
    GAN_ARCH_DEFAULTS,
    GAN_LOSSES,
    DataConfig,
    GanEvalConfig,
    GanTrainConfig,
    gan_train_defaults,
)
from digitflow.data import fetch
from digitflow.errors import DigitflowError
from digitflow.generative_metrics import FEATURE_LAYERS
from digitflow.models.gan import ARCHITECTURES
from flows.cli.options import (
    EXIT_BAD_INPUT,
    add_data_source_options,
    add_optimizer_options,
    add_resume_options,
    add_seed_and_device_options,
    dataset_spec,
    optimizer_params,
    run_flow,
)
from flows.params import check_experiment, check_output_dir

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


def _arch_defaults(key: str) -> str:
    return " / ".join(f"{getattr(gan_train_defaults(a), key)} for {a}" for a in ARCHITECTURES)


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
    d = DataConfig()
    data = gan.add_argument_group("data")
    add_data_source_options(data, train_help=f"the real images the GAN learns from (default {d.train})")
    data.add_argument(
        "--test",
        type=dataset_spec,
        default=None,
        metavar="SPEC",
        help="held-out real images FID compares the samples with (default: the test split of the training "
        "dataset, or the rest of it when --train is a slice of it open at one end: "
        "mnist:test[:8000] -> mnist:test[8000:])",
    )

    t = GanTrainConfig()
    train = gan.add_argument_group("GAN (defaults depend on the architecture)")
    train.add_argument(
        "--arch",
        default=t.arch,
        metavar="{" + ",".join(ARCHITECTURES) + "}",
        help=f"mlp: the study notes' fully connected GAN (z 100 -> 256 -> 512 -> 1024 -> 784, dropout in D); "
        f"dcgan: 2 transposed convolutions / 2 convolutions with batch norm (default {t.arch})",
    )
    train.add_argument("--epochs", type=int, default=None, help=f"(default {_arch_defaults('epochs')})")
    train.add_argument("--batch-size", type=int, default=None, help=f"(default {_arch_defaults('batch_size')})")
    train.add_argument(
        "--latent-dim", type=int, default=t.latent_dim, help=f"size of the noise vector z (default {t.latent_dim})"
    )
    train.add_argument(
        "--width",
        type=int,
        default=t.width,
        help=f"DCGAN channel width w: generator 2w -> w -> 1, discriminator 1 -> w -> 2w (default {t.width})",
    )
    train.add_argument(
        "--real-label",
        type=float,
        default=None,
        metavar="P",
        help="with --loss bce: the discriminator's target for real images; under 1 is one-sided label smoothing "
        f"(default {_arch_defaults('real_label')})",
    )
    train.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        metavar="D",
        help="keep an exponential moving average of the generator's weights and sample from it; 0 = off "
        f"(default {_arch_defaults('ema_decay')})",
    )
    train.add_argument(
        "--loss",
        choices=GAN_LOSSES,
        default=None,
        help="bce: the non-saturating loss (binary cross-entropy, --real-label applies); hinge: SN-GAN's hinge loss "
        f"(default {_arch_defaults('loss')})",
    )
    train.add_argument(
        "--spectral-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="DCGAN discriminator: spectral normalisation on every layer instead of batch norm (SN-GAN) "
        f"(default {_arch_defaults('spectral_norm')})",
    )
    train.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast for the forward passes where the device has fast bfloat16 "
        f"(default {_arch_defaults('amp')})",
    )
    add_seed_and_device_options(train)
    opt_defaults = "; ".join(
        f"for {a}: {', '.join(f'{k}={v}' for k, v in gan_train_defaults(a).optimizer.kwargs.items())}"
        for a in GAN_ARCH_DEFAULTS
    )
    add_optimizer_options(
        train,
        default_optimizer=t.optimizer.name,
        opt_defaults=opt_defaults + " (the same optimizer and options for the generator and the discriminator)",
        param_group_example="mlp: net.0; dcgan generator: project, upsample; discriminator: net",
    )
    add_resume_options(train, checkpoint_default="outputs/checkpoints/gan-<arch>-<hash of the training options>.pt")

    e = GanEvalConfig()
    judge = gan.add_argument_group("judging the samples")
    judge.add_argument(
        "--judge",
        default=None,
        metavar="URI",
        help="the classifier that judges the samples: an MLflow model URI or registered alias, e.g. "
        "models:/digitflow-lenet@candidate, or a logged model models:/m-ID (default: train a LeNet on the same "
        "training data first, in its own child run)",
    )
    judge.add_argument(
        "--judge-epochs",
        type=int,
        default=None,
        help="epochs for the judge the flow trains (default: the classifier's)",
    )
    judge.add_argument(
        "--fid-images",
        type=int,
        default=e.num_images,
        metavar="N",
        help=f"generated, held-out and floor images per FID (default {e.num_images})",
    )
    judge.add_argument(
        "--eval-every",
        type=int,
        default=e.every,
        metavar="K",
        help=f"judge every K epochs and after the last (default {e.every})",
    )
    judge.add_argument(
        "--feature-layer",
        choices=FEATURE_LAYERS,
        default=e.feature_layer,
        help=f"the judge's features FID compares: penultimate (LeNet: 500) or conv (800) (default {e.feature_layer})",
    )

    out = gan.add_argument_group("export and tracking")
    out.add_argument(
        "--export-mode",
        choices=["script", "trace"],
        default="script",
        help="TorchScript: script or trace (default script)",
    )
    out.add_argument(
        "--output-dir", default="outputs", metavar="DIR", help="checkpoints and exported files (default outputs)"
    )
    out.add_argument("--experiment", default="digitflow-gan", help="MLflow experiment name (default digitflow-gan)")
    return gan


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options -> keyword arguments of :func:`flows.gan.gan_pipeline`."""
    params = optimizer_params(args)
    if args.optimizer == GanTrainConfig().optimizer.name:
        params["optimizer"] = None  # the architecture's default optimizer, with its default options
    return dict(
        train=args.train,
        test=args.test,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        latent_dim=args.latent_dim,
        width=args.width,
        **params,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        real_label=args.real_label,
        ema_decay=args.ema_decay,
        loss=args.loss,
        spectral_norm=args.spectral_norm,
        judge=args.judge,
        judge_epochs=args.judge_epochs,
        fid_images=args.fid_images,
        eval_every=args.eval_every,
        feature_layer=args.feature_layer,
        export_mode=args.export_mode,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        offline=args.offline,
        resume=args.resume,
        output_dir=args.output_dir,
        checkpoint=args.checkpoint,
        experiment=args.experiment,
    )


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check every option, then run :func:`flows.gan.gan_pipeline` in this process."""
    try:
        params = flow_parameters(args)
        from flows.gan_params import build_gan_config

        config = build_gan_config(**{k: v for k, v in params.items() if k != "experiment"})
        if config.data.offline:
            for spec in (config.data.train, config.data.test):
                fetch(spec, config.data.data_dir, offline=True)
        check_experiment(args.experiment)
        check_output_dir(config.output_dir)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")

    def start() -> Any:
        from flows.gan import gan_pipeline  # imports Prefect and MLflow: only once the options are valid

        return gan_pipeline(**params)

    return run_flow(
        argv, config.train.epochs, start, finished="digitflow gan finished", summary_lines=lambda s: s.lines()
    )

"""The ``digitflow`` command (also ``python -m flows``).

``digitflow run`` runs the pipeline flow in-process (Prefect's ephemeral mode when no server is
configured) and prints a summary. Bad input ends with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from digitflow.config import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    DATASET_FAMILIES,
    DEFAULT_TARGETS,
    OPTIMIZER_DEFAULTS,
    DataConfig,
    ExportConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    TrainConfig,
    train_defaults,
)
from digitflow.data import DATASETS, fetch, parse_spec
from digitflow.data.framing import PREPROCESSORS
from digitflow.errors import CheckpointError, ConfigError, DataError, DigitflowError
from flows.interrupt import RunSignals, start_temporary_server
from flows.params import augment_names, build_config, check_experiment, check_output_dir
from tasks.logs import quiet_expected_errors

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

EPILOG = """\
dataset specs: NAME:SPLIT[START:STOP] with NAME in {datasets} and SPLIT train or test;
  bounds are indices or percentages: mnist:train, mnist:test[:8000], mnist:test[8000:], usps:test[:50%]
examples:
  digitflow run --epochs 3
  DIGITFLOW_DATA_DIR=../shared/data digitflow run --train 'mnist:test[:8000]' --test 'mnist:test[8000:]' --offline
  digitflow run --optimizer AdamW --opt lr=1e-3 --opt weight_decay=0.01 --scheduler OneCycleLR --sched max_lr=0.01
  digitflow run --param-group classifier:lr=0.001      # a separate learning rate for the classifier head
results: MLflow (make ui; the summary prints the exact command and link),
  Prefect (prefect server start, or artifacts in the run)
"""


def _literal(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"[0.9, 0.99]"`` -> [0.9, 0.99], ``"True"`` -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r} (e.g. {option} lr=0.01)")
        out[key.strip()] = _literal(value.strip())
    return out


def _param_groups(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for item in items or ():
        prefix, sep, rest = item.partition(":")
        if not sep or not prefix:
            raise ConfigError(f"--param-group takes PREFIX:KEY=VALUE, got {item!r} (e.g. classifier:lr=0.001)")
        groups.setdefault(prefix, {}).update(_key_values([rest], "--param-group PREFIX:"))
    return groups


def _spec(text: str) -> str:
    """argparse type: validate a dataset spec early, so a typo fails before anything starts."""
    try:
        return str(parse_spec(text))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and where to read more, without the usage
    block (which, for ``digitflow run``, is a dozen lines in front of the one that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``digitflow`` argument parser (``digitflow run --help`` lists every option)."""
    parser = _OneLineErrorParser(
        prog="digitflow", description="Workflow-orchestrated digit classifiers: Prefect flows, MLflow tracking."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="train, evaluate, test across domains and export, tracked in MLflow",
        description="Run the pipeline: data -> train -> evaluate -> cross-domain test -> export. "
        "Every stage is a Prefect task with its own MLflow child run under one parent run.",
        epilog=EPILOG.format(datasets=", ".join(sorted(DATASETS))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DataConfig()
    data = run.add_argument_group("data")
    data.add_argument(
        "--train", type=_spec, default=d.train, metavar="SPEC", help=f"training split (default {d.train})"
    )
    data.add_argument(
        "--test",
        type=_spec,
        default=None,
        metavar="SPEC",
        help="held-out split (default: the test split of the training dataset, or the rest of it when "
        "--train is a slice of it open at one end: mnist:test[:8000] -> mnist:test[8000:])",
    )
    after: dict[str, list[str]] = {}
    for name, specs in DEFAULT_TARGETS.items():
        after.setdefault(" ".join(specs) or "none", []).append(name)
    targets = "; ".join(f"{specs} after {', '.join(names)}" for specs, names in after.items())
    data.add_argument(
        "--target",
        type=_spec,
        nargs="+",
        default=None,
        metavar="SPEC",
        help=f"cross-domain test set(s), each evaluated in its own task (default by training dataset: {targets})",
    )
    data.add_argument("--no-target", dest="target", action="store_const", const=[], help="skip cross-domain testing")
    data.add_argument(
        "--target-preprocess",
        choices=sorted(PREPROCESSORS),
        default=d.target_preprocess,
        help=f"how images that are not 28x28 (USPS) are framed (default {d.target_preprocess})",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"where the official files are, torchvision layout (default $DIGITFLOW_DATA_DIR or ./{d.data_dir})",
    )
    data.add_argument(
        "--cache-dir", default=d.cache_dir, metavar="DIR", help=f"transformed-tensor cache (default {d.cache_dir})"
    )
    data.add_argument("--offline", action="store_true", help="never download; use the files already in the data dir")

    t, o, gpu = TrainConfig(), OptimizerConfig(), train_defaults("cuda")
    train = run.add_argument_group("training (defaults depend on the device: CPU / CUDA)")
    train.add_argument("--epochs", type=int, default=None, help=f"(default {t.epochs} / {gpu.epochs})")
    batch_sizes = "".join(f"; {size} for {name}" for name, size in BATCH_SIZE_BY_OPTIMIZER.items())
    train.add_argument(
        "--batch-size", type=int, default=None, help=f"(default {t.batch_size} / {gpu.batch_size}{batch_sizes})"
    )
    train.add_argument(
        "--seed", type=int, default=t.seed, help=f"same seed, same metrics on the same device (default {t.seed})"
    )
    train.add_argument(
        "--device", default=t.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps (default auto)"
    )
    train.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast for the forward pass, where the device has fast bfloat16 (CPUs with "
        "AVX512-BF16/AMX, CUDA); --no-amp trains in float32 (default: on / off, float32 being faster "
        "for LeNet on a GPU)",
    )
    train.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        metavar="EPS",
        help=f"cross-entropy label smoothing (default {t.label_smoothing} / {gpu.label_smoothing})",
    )
    train.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay each training step as one CUDA graph (CUDA only; not with LBFGS or torchvision "
        "extra augmentations; default: on wherever possible on CUDA)",
    )
    train.add_argument(
        "--optimizer",
        default=o.name,
        metavar="NAME",
        help=f"any torch.optim class: SGD, Adam, AdamW, LBFGS, ... (default {o.name})",
    )
    train.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="optimizer keyword argument, repeatable; adds to the defaults, which are torch's except "
        + "; ".join(
            f"for {name}: {', '.join(f'{k}={v}' for k, v in kwargs.items())}"
            for name, kwargs in {o.name: o.kwargs, **OPTIMIZER_DEFAULTS}.items()
        )
        + f" (on CUDA, for {o.name}: {', '.join(f'{k}={v}' for k, v in gpu.optimizer.kwargs.items())})",
    )
    train.add_argument("--lr", type=float, default=None, help="shortcut for --opt lr=LR")
    train.add_argument(
        "--param-group",
        action="append",
        metavar="PREFIX:KEY=VALUE",
        help="options for parameters whose name starts with PREFIX (features, classifier, classifier.3), repeatable",
    )
    s = SchedulerConfig()
    train.add_argument(
        "--scheduler",
        default=s.name,
        metavar="NAME",
        help="any torch.optim.lr_scheduler class, stepped per epoch; T_max/total_iters/total_steps "
        f"default to the epochs; 'none' for a constant rate (default {s.name})",
    )
    train.add_argument("--sched", action="append", metavar="KEY=VALUE", help="scheduler keyword argument, repeatable")
    families = "; ".join(
        f"{' '.join(augment_names(config)) or 'none'} for "
        + ", ".join(n for n, f in DATASET_FAMILIES.items() if f == family)
        for family, config in AUGMENT_BY_FAMILY.items()
    )
    train.add_argument(
        "--augment",
        nargs="+",
        default=None,
        metavar="NAME",
        help="augmentations drawn per image: affine, elastic, hflip, and torchvision.transforms.v2 "
        f"classes such as RandomErasing (default by training dataset: {families})",
    )
    train.add_argument(
        "--no-augment", dest="augment", action="store_const", const=[], help="train without augmentation"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run with the same options from its last checkpoint",
    )
    train.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="checkpoint file written after every epoch and read by --resume "
        "(default: outputs/checkpoints/lenet-<hash of the training options>.pt)",
    )

    e, r = ExportConfig(), RunConfig()
    out = run.add_argument_group("export and tracking")
    out.add_argument(
        "--export-mode",
        choices=["script", "trace"],
        default=e.mode,
        help=f"TorchScript: torch.jit.script or trace (default {e.mode})",
    )
    out.add_argument(
        "--output-dir",
        default=r.output_dir,
        metavar="DIR",
        help=f"checkpoints and exported files (default {r.output_dir})",
    )
    out.add_argument("--experiment", default="digitflow", help="MLflow experiment name (default digitflow)")
    return parser


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options -> keyword arguments of :func:`flows.pipeline.pipeline`."""
    # --opt and --lr add to the optimizer's defaults, which build_config fills in for the device: the
    # project's for SGD and LBFGS, torch's own for any other optimizer.
    optimizer_kwargs = _key_values(args.opt, "--opt")
    if args.lr is not None:
        optimizer_kwargs["lr"] = args.lr
    params = dict(
        train=args.train,
        test=args.test,
        target=args.target,
        target_preprocess=args.target_preprocess,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        optimizer_kwargs=optimizer_kwargs or None,
        param_groups=_param_groups(args.param_group) or None,
        scheduler=args.scheduler,
        scheduler_kwargs=_key_values(args.sched, "--sched") or None,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        label_smoothing=args.label_smoothing,
        cuda_graphs=args.cuda_graphs,
        export_mode=args.export_mode,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        offline=args.offline,
        resume=args.resume,
        output_dir=args.output_dir,
        checkpoint=args.checkpoint,
        experiment=args.experiment,
    )
    params["augment"] = args.augment  # None: the default of the training dataset's family
    return params


def _quiet_expected_errors() -> None:
    """One line per expected error in the log, a retried one in short: the CLI prints it in full last."""
    quiet_expected_errors(full_in_log=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``digitflow`` console script."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        params = flow_parameters(args)
        # Check every option now, not minutes later inside the flow (and without a failed run in MLflow).
        config = build_config(**{k: v for k, v in params.items() if k != "experiment"})
        if config.data.offline:  # nothing to download: the files must be there, so say now if one is not
            for spec in (config.data.train, config.data.test, *config.data.targets):
                fetch(spec, config.data.data_dir, offline=True)  # verified once; the flow reuses the check
        check_experiment(args.experiment)
        check_output_dir(config.output_dir)
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")

    # Ctrl-C / SIGTERM from here on: one line saying how to --resume, exit 130 / 143 (flows/interrupt.py).
    signals = RunSignals(argv, config.train.epochs)
    try:
        with signals:
            from flows.pipeline import pipeline  # imports Prefect and MLflow: only once the options are valid

            _quiet_expected_errors()
            signals.replace_prefect_sigterm_handler()
            start_temporary_server()
            summary = pipeline(**params)
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
    print("\n".join(["", "digitflow run finished", *("  " + line for line in summary.lines())]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``digitflow run``: the classifier pipeline (data -> train -> evaluate -> cross-domain test -> export)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from digitflow.config import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    DATASET_FAMILIES,
    DEFAULT_TARGETS,
    OPTIMIZER_DEFAULTS,
    AdaptConfig,
    DataConfig,
    ExportConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    TrainConfig,
    train_defaults,
)
from digitflow.data import DATASETS, fetch
from digitflow.data.framing import PREPROCESSORS
from digitflow.distributed import check_data_parallel
from digitflow.errors import DigitflowError
from flows.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    add_adversarial_training_options,
    add_data_source_options,
    add_optimizer_options,
    add_resume_options,
    add_robustness_options,
    add_scheduler_options,
    add_seed_and_device_options,
    adversarial_params,
    dataset_spec,
    key_values,
    optimizer_params,
    run_flow,
)
from flows.params import ADAPT_METHODS, augment_names, build_config, check_experiment, check_output_dir

NAME = "run"
EPILOG = """\
dataset specs: NAME:SPLIT[START:STOP] with NAME in {datasets} and SPLIT train or test;
  bounds are indices or percentages: mnist:train, mnist:test[:8000], mnist:test[8000:], usps:test[:50%]
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
        epilog=EPILOG.format(datasets=", ".join(sorted(DATASETS))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(run)
    run.add_argument_group("multi-process training").add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel training on N processes (DistributedDataParallel through torchrun; gloo on the "
        "CPU, nccl on CUDA); --batch-size stays the global batch, each process trains on its share (default 1)",
    )
    return run


def add_run_options(run: argparse.ArgumentParser, *, resume: bool = True) -> None:
    """Every option of ``digitflow run`` (``digitflow sweep`` takes them too, as the options it keeps
    fixed); ``resume=False`` leaves out ``--resume`` and ``--checkpoint``."""
    d = DataConfig()
    data = run.add_argument_group("data")
    add_data_source_options(data)
    data.add_argument(
        "--test",
        type=dataset_spec,
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
        type=dataset_spec,
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

    t, o, gpu = TrainConfig(), OptimizerConfig(), train_defaults("cuda")
    train = run.add_argument_group("training (defaults depend on the device: CPU / CUDA)")
    train.add_argument("--epochs", type=int, default=None, help=f"(default {t.epochs} / {gpu.epochs})")
    batch_sizes = "".join(f"; {size} for {name}" for name, size in BATCH_SIZE_BY_OPTIMIZER.items())
    train.add_argument(
        "--batch-size", type=int, default=None, help=f"(default {t.batch_size} / {gpu.batch_size}{batch_sizes})"
    )
    add_seed_and_device_options(train)
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
    add_optimizer_options(
        train,
        default_optimizer=o.name,
        opt_defaults="; ".join(
            f"for {name}: {', '.join(f'{k}={v}' for k, v in kwargs.items())}"
            for name, kwargs in {o.name: o.kwargs, **OPTIMIZER_DEFAULTS}.items()
        )
        + f" (on CUDA, for {o.name}: {', '.join(f'{k}={v}' for k, v in gpu.optimizer.kwargs.items())})",
        param_group_example="features, classifier, classifier.3",
    )
    add_scheduler_options(train, default_scheduler=SchedulerConfig().name)
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
    if resume:
        add_resume_options(train, checkpoint_default="outputs/checkpoints/lenet-<hash of the training options>.pt")
    add_adapt_options(run)
    add_adversarial_training_options(train)
    add_robustness_options(run.add_argument_group("robustness (attacks on the held-out split after training)"))

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


def add_adapt_options(run: argparse.ArgumentParser) -> None:
    """``--adapt``, ``--adapt-target``, ``--adapt-opt``: domain adaptation (DANN) to unlabeled target images."""
    a = AdaptConfig()
    adapt = run.add_argument_group(
        "domain adaptation (the source-only model is trained beside it, as the baseline of every target)"
    )
    adapt.add_argument(
        "--adapt",
        choices=list(ADAPT_METHODS),
        default=a.method,
        help="adapt to unlabeled target images: dann (domain-adversarial training, Ganin and Lempitsky 2015)",
    )
    adapt.add_argument(
        "--adapt-target",
        type=dataset_spec,
        default=a.target,
        metavar="SPEC",
        help="the unlabeled target images (their labels are never read), e.g. usps:test[:1000]; "
        "evaluate on others with --target, e.g. usps:test[1000:]",
    )
    fields = [f for f in dataclasses.fields(AdaptConfig) if f.name not in ("method", "target")]
    adapt.add_argument(
        "--adapt-opt",
        action="append",
        metavar="KEY=VALUE",
        help="adaptation setting, repeatable: " + ", ".join(f"{f.name} (default {f.default})" for f in fields),
    )


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options -> keyword arguments of :func:`flows.pipeline.pipeline`."""
    return dict(
        train=args.train,
        test=args.test,
        target=args.target,
        target_preprocess=args.target_preprocess,
        epochs=args.epochs,
        batch_size=args.batch_size,
        # the optimizer's options add to its defaults, which build_config fills in for the device: the
        # project's for SGD and LBFGS, torch's own for any other optimizer
        **optimizer_params(args),
        augment=args.augment,  # None: the default of the training dataset's family
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        label_smoothing=args.label_smoothing,
        cuda_graphs=args.cuda_graphs,
        export_mode=args.export_mode,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        offline=args.offline,
        resume=getattr(args, "resume", False),
        output_dir=args.output_dir,
        checkpoint=getattr(args, "checkpoint", None),
        experiment=args.experiment,
        **adapt_params(args),
        **adversarial_params(args),  # robustness evaluation and adversarial training
    )


def adapt_params(args: argparse.Namespace) -> dict[str, Any]:
    """The adaptation options as flow parameters (none at all without them: runs without adaptation
    pass the flow exactly what they did before)."""
    options = key_values(args.adapt_opt, "--adapt-opt")
    if args.adapt is None and args.adapt_target is None and not options:
        return {}
    return {"adapt": args.adapt, "adapt_target": args.adapt_target, "adapt_options": options or None}


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check every option, then run :func:`flows.pipeline.pipeline` in this process."""
    try:
        params = flow_parameters(args)
        # Check every option now, not minutes later inside the flow (and without a failed run in MLflow).
        config = build_config(**{k: v for k, v in params.items() if k != "experiment"})
        if config.data.offline:  # nothing to download: the files must be there, so say now if one is not
            adapt_target = (config.adapt.target,) if config.adapt.target else ()
            for spec in (config.data.train, config.data.test, *config.data.targets, *adapt_target):
                fetch(spec, config.data.data_dir, offline=True)  # verified once; the flow reuses the check
        check_experiment(args.experiment)
        check_output_dir(config.output_dir)
        check_data_parallel(config, args.nproc)
        params["nproc"] = args.nproc
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    from tasks.tracking import server_problem, tracking_uri  # MLflow: only once the options are valid

    problem = server_problem(tracking_uri())  # a tracking server that does not answer: say so before training
    if problem:
        parser.exit(EXIT_FAILED, f"digitflow: error: {problem}\n")

    def start() -> Any:
        from flows.pipeline import pipeline  # imports Prefect and MLflow: only once the options are valid

        return pipeline(**params)

    return run_flow(
        argv, config.train.epochs, start, finished="digitflow run finished", summary_lines=lambda s: s.lines()
    )

"""Every option of the classifier and GAN flows, defined once: its name, type, default, help and flag.

An :class:`Option`'s ``name`` is the flow's parameter, the flat deployment parameter (``-p epochs=3``,
``prefect.yaml``) and, with dashes, the CLI flag (``--epochs``). From the tables below:

- ``digitflow run`` / ``gan`` / ``sweep`` build their argparse options (flows/cli/options.py);
- the flows take their signature, so Prefect's deployment form shows each option with its type, default
  and help (flows/signature.py);
- :mod:`digitflow.params` resolves the flat values into a ``RunConfig`` / ``GanConfig`` (the "use" of an
  option), whose flattened fields are the MLflow params and whose differences from the defaults name
  the run.

Adding an option therefore touches its :class:`Option` here, the line of :mod:`digitflow.params` (and
the core) that uses it, and its test. Why this and not typed parameter models: the deployments, the
trigger and every earlier run use the flat names, which one table keeps as they are, without a second
set of nested names to translate; and the table is plain data, which the CLI reads without importing
torch, Prefect or pydantic (``digitflow --help`` stays cheap).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Literal

from digitflow.config.schema import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    DATASET_FAMILIES,
    DEFAULT_TARGETS,
    GAN_ARCH_DEFAULTS,
    GAN_LOSSES,
    MODEL_TRAIN_DEFAULTS,
    OPTIMIZER_DEFAULTS,
    AdaptConfig,
    AdaptMethod,
    AdversarialMode,
    AdversarialTrainingConfig,
    DataConfig,
    ExportConfig,
    ExportFormat,
    ExportMode,
    FeatureLayer,
    GanArch,
    GanEvalConfig,
    GanTrainConfig,
    OptimizerConfig,
    PromotionConfig,
    RobustnessConfig,
    RunConfig,
    SchedulerConfig,
    TargetPreprocess,
    TrainConfig,
    gan_train_defaults,
    robustness_defaults,
    train_defaults,
)
from digitflow.errors import ConfigError

Kind = Literal["value", "flag", "toggle", "repeat", "pairs", "groups"]
REQUIRED: Any = inspect.Parameter.empty  # the default of an option the flow cannot run without


@dataclass(frozen=True)
class Option:
    """One option of a flow.

    ``kind`` says how the CLI reads it: ``value`` (``--epochs 3``; a list with ``nargs="+"``), ``flag``
    (``--offline``: True when given), ``toggle`` (``--amp`` / ``--no-amp``; the default when neither),
    ``repeat`` (``--figure A --figure B`` -> a list), ``pairs`` (repeatable ``--opt KEY=VALUE`` -> a dict of
    Python literals), ``groups`` (repeatable ``--param-group PREFIX:KEY=VALUE`` -> ``{prefix: {key:
    value}}``). ``off`` is a second flag that sets the value to ``[]`` (``--no-target``). ``flag`` None: a
    flow parameter without a CLI option (the command fills it in its own way). ``default`` :data:`REQUIRED`:
    the flow has no default for it.
    """

    name: str
    annotation: Any  # the flow parameter's type, as Prefect validates it and renders it in a form
    default: Any = None  # None where the default follows other settings (the help says which)
    help: str = ""
    group: str = ""  # the heading the CLI lists it under
    kind: Kind = "value"
    value_type: type = str  # what the CLI converts each value to
    nargs: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    spec: bool = False  # a dataset spec, checked as the CLI parses it
    off: tuple[str, str] | None = None  # (flag, help) of a flag that sets the value to []
    flag: str | None = ""  # "" = "--" + name with dashes
    in_config: bool = True  # False: a parameter of the flow the config does not hold (experiment, nproc)

    @property
    def cli_flag(self) -> str | None:
        """The option's CLI flag, or None for a flow-only parameter."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")


def defaults(options: tuple[Option, ...]) -> dict[str, Any]:
    """``{name: default}`` of ``options``: the flow's parameters when none is given."""
    return {o.name: o.default for o in options}


def complete(options: tuple[Option, ...], given: dict[str, Any], what: str) -> dict[str, Any]:
    """``given`` with every other option at its default; a one-line ConfigError names an unknown one."""
    known = defaults(options)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"{what} has no option {', '.join(unknown)}; its options: {', '.join(sorted(known))}")
    return {**known, **given}


def choices_of(literal: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type (possibly ``| None``), in order."""
    args = typing.get_args(literal)
    return tuple(a for a in args if a is not type(None))


def _either(cpu: Any, cuda: Any) -> str:
    return f"{cpu} / {cuda}"


_T, _GPU, _D = TrainConfig(), train_defaults("cuda"), DataConfig()
_A, _R, _E, _RUN = AdversarialTrainingConfig(), RobustnessConfig(), ExportConfig(), RunConfig()
_R_CPU = robustness_defaults("cpu")
_OPT = OptimizerConfig()


def _targets_by_dataset() -> str:
    after: dict[str, list[str]] = {}
    for name, specs in DEFAULT_TARGETS.items():
        after.setdefault(" ".join(specs) or "none", []).append(name)
    return "; ".join(f"{specs} after {', '.join(names)}" for specs, names in after.items())


def _augment_by_family() -> str:
    def names(config: Any) -> str:
        switches = [n for n in ("affine", "elastic", "hflip") if getattr(config, n)]
        return " ".join([*switches, *config.extra]) or "none"

    return "; ".join(
        f"{names(config)} for " + ", ".join(n for n, f in DATASET_FAMILIES.items() if f == family)
        for family, config in AUGMENT_BY_FAMILY.items()
    )


def _kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


# --- options the flows share -------------------------------------------------------------------------------------

DATA = "data"
TRAINING = "training (defaults depend on the device: CPU / CUDA)"
OUTPUT = "export and tracking"

TRAIN = Option("train", str, _D.train, f"training split (default {_D.train})", DATA, metavar="SPEC", spec=True)
TEST = Option(
    "test",
    str | None,
    None,
    "held-out split (default: the test split of the training dataset, or the rest of it when --train is a "
    "slice of it open at one end: mnist:test[:8000] -> mnist:test[8000:])",
    DATA,
    metavar="SPEC",
    spec=True,
)
DATA_DIR = Option(
    "data_dir",
    str | None,
    None,
    f"where the official files are, torchvision layout (default $DIGITFLOW_DATA_DIR or ./{_D.data_dir})",
    DATA,
    metavar="DIR",
)
CACHE_DIR = Option(
    "cache_dir", str, _D.cache_dir, f"transformed-tensor cache (default {_D.cache_dir})", DATA, metavar="DIR"
)
OFFLINE = Option("offline", bool, False, "never download; use the files already in the data dir", DATA, kind="flag")
SEED = Option("seed", int, _T.seed, f"same seed, same metrics on the same device (default {_T.seed})", value_type=int)
DEVICE = Option("device", str, _T.device, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps (default auto)")
OPTIMIZER = Option(
    "optimizer",
    str,
    _OPT.name,
    f"any torch.optim class: SGD, Adam, AdamW, LBFGS, ... (default {_OPT.name})",
    metavar="NAME",
)
OPTIMIZER_KWARGS = Option(
    "optimizer_kwargs",
    dict[str, Any] | None,
    None,
    "optimizer keyword argument, repeatable; adds to the defaults, which are torch's except "
    + "; ".join(f"for {n}: {_kwargs(kw)}" for n, kw in {_OPT.name: _OPT.kwargs, **OPTIMIZER_DEFAULTS}.items())
    + f" (on CUDA, for {_OPT.name}: {_kwargs(_GPU.optimizer.kwargs)})",
    kind="pairs",
    metavar="KEY=VALUE",
    flag="--opt",
)
LR = Option("lr", float | None, None, "shortcut for --opt lr=LR", value_type=float)
PARAM_GROUPS = Option(
    "param_groups",
    dict[str, dict[str, Any]] | None,
    None,
    "options for parameters whose name starts with PREFIX (features, classifier, classifier.3), repeatable",
    kind="groups",
    metavar="PREFIX:KEY=VALUE",
    flag="--param-group",
)
RESUME = Option(
    "resume", bool, False, "continue an interrupted run with the same options from its last checkpoint", kind="flag"
)
CHECKPOINT = Option(
    "checkpoint",
    str | None,
    None,
    "checkpoint file written after every epoch and read by --resume "
    "(default: outputs/checkpoints/<model>-<hash of the training options>.pt)",
    metavar="FILE",
)
EXPORT_MODE = Option(
    "export_mode",
    ExportMode,
    _E.mode,
    f"TorchScript: torch.jit.script or trace (default {_E.mode})",
    OUTPUT,
    choices=choices_of(ExportMode),
)
EXPORT_FORMATS = Option(
    "export_formats",
    str,
    ",".join(_E.formats),
    f"the exported files, comma-separated: {', '.join(choices_of(ExportFormat))} (AOTInductor: compiled ahead of "
    "time, needs a C++ compiler, tens of seconds; if it cannot compile, one line says why and the others are kept); "
    f"torchscript is always written, it is what gets registered (default {','.join(_E.formats)})",
    OUTPUT,
    metavar="FORMATS",
)
OUTPUT_DIR = Option(
    "output_dir",
    str,
    _RUN.output_dir,
    f"checkpoints and exported files (default {_RUN.output_dir})",
    OUTPUT,
    metavar="DIR",
)
EXPERIMENT = Option(
    "experiment", str, "digitflow", "MLflow experiment name (default digitflow)", OUTPUT, in_config=False
)


def _in(group: str, *options: Option) -> tuple[Option, ...]:
    return tuple(dataclasses.replace(o, group=group) for o in options)


# --- digitflow run: the classifier pipeline ----------------------------------------------------------------------

ADAPT = "domain adaptation (the source-only model is trained beside it, as the baseline of every target)"
ROBUSTNESS = "robustness (attacks on the held-out split after training; defaults: CPU / CUDA)"

RUN_OPTIONS: tuple[Option, ...] = (
    TRAIN,
    DATA_DIR,
    CACHE_DIR,
    OFFLINE,
    TEST,
    Option(
        "target",
        list[str] | None,
        None,
        f"cross-domain test set(s), each evaluated in its own task (default by training dataset: "
        f"{_targets_by_dataset()})",
        DATA,
        nargs="+",
        metavar="SPEC",
        spec=True,
        off=("--no-target", "skip cross-domain testing"),
    ),
    Option(
        "target_preprocess",
        TargetPreprocess,
        _D.target_preprocess,
        f"how images that are not 28x28 (USPS) are framed (default {_D.target_preprocess})",
        DATA,
        choices=choices_of(TargetPreprocess),
    ),
    *_in(
        TRAINING,
        Option(
            "model",
            str,
            _T.model,
            "the model: lenet, minivgg (more accurate, trains longer) or package.module:Factory, your own "
            "(docs/models.md); it names the registered model digitflow-<name> "
            f"(default {_T.model})",
            metavar="NAME",
        ),
        Option(
            "epochs",
            int | None,
            None,
            f"(default {_either(_T.epochs, _GPU.epochs)}"
            + "".join(f"; {kw['epochs']} for {m}" for m, kw in MODEL_TRAIN_DEFAULTS.items() if "epochs" in kw)
            + ")",
            value_type=int,
        ),
        Option(
            "batch_size",
            int | None,
            None,
            f"(default {_either(_T.batch_size, _GPU.batch_size)}"
            + "".join(f"; {size} for {name}" for name, size in BATCH_SIZE_BY_OPTIMIZER.items())
            + ")",
            value_type=int,
        ),
        SEED,
        DEVICE,
        Option(
            "amp",
            bool | None,
            None,
            "bfloat16 autocast for the forward pass, where the device has fast bfloat16 (CPUs with AVX512-BF16/AMX, "
            "CUDA); --no-amp trains in float32 (default: on / off, float32 being faster for LeNet on a GPU)",
            kind="toggle",
        ),
        Option(
            "label_smoothing",
            float | None,
            None,
            f"cross-entropy label smoothing (default {_either(_T.label_smoothing, _GPU.label_smoothing)})",
            value_type=float,
            metavar="EPS",
        ),
        Option(
            "cuda_graphs",
            bool | None,
            None,
            "replay each training step as one CUDA graph (CUDA only; not with LBFGS or torchvision extra "
            "augmentations; default: on wherever possible on CUDA)",
            kind="toggle",
        ),
        OPTIMIZER,
        OPTIMIZER_KWARGS,
        LR,
        PARAM_GROUPS,
        Option(
            "scheduler",
            str | None,
            SchedulerConfig.name,
            "any torch.optim.lr_scheduler class, stepped per epoch; T_max/total_iters/total_steps default to the "
            f"epochs; 'none' for a constant rate (default {SchedulerConfig.name})",
            metavar="NAME",
        ),
        Option(
            "scheduler_kwargs",
            dict[str, Any] | None,
            None,
            "scheduler keyword argument, repeatable",
            kind="pairs",
            metavar="KEY=VALUE",
            flag="--sched",
        ),
        Option(
            "augment",
            list[str] | None,
            None,
            "augmentations drawn per image: affine, elastic, hflip, and torchvision.transforms.v2 classes such as "
            f"RandomErasing (default by training dataset: {_augment_by_family()})",
            nargs="+",
            metavar="NAME",
            off=("--no-augment", "train without augmentation"),
        ),
        RESUME,
        CHECKPOINT,
    ),
    *_in(
        ADAPT,
        Option(
            "adapt",
            AdaptMethod | None,
            None,
            "adapt to unlabeled target images: dann (domain-adversarial training, Ganin and Lempitsky 2015)",
            choices=choices_of(AdaptMethod),
        ),
        Option(
            "adapt_target",
            str | None,
            None,
            "the unlabeled target images (their labels are never read), e.g. usps:test[:1000]; evaluate on others "
            "with --target, e.g. usps:test[1000:]",
            metavar="SPEC",
            spec=True,
        ),
        Option(
            "adapt_options",
            dict[str, Any] | None,
            None,
            "adaptation setting, repeatable: "
            + ", ".join(
                f"{f.name} (default {f.default})"
                for f in dataclasses.fields(AdaptConfig)
                if f.name not in ("method", "target")
            ),
            kind="pairs",
            metavar="KEY=VALUE",
            flag="--adapt-opt",
        ),
    ),
    *_in(
        TRAINING,
        Option(
            "adv_train",
            AdversarialMode | None,
            None,
            "adversarial training: each batch replaced by its attacked images; fgsm-rs: FGSM from a random start, "
            "step 1.25 x eps (Wong et al. 2020), pgd: --adv-steps steps of 2.5 x eps / steps from a random start "
            "(Madry et al. 2018) (default: off)",
            choices=choices_of(AdversarialMode),
        ),
        Option(
            "adv_eps",
            float | None,
            None,
            f"L-infinity epsilon on the pixel scale [0, 1] for adversarial training (default {_A.eps:g})",
            value_type=float,
            metavar="EPS",
        ),
        Option(
            "adv_steps",
            int | None,
            None,
            f"PGD steps per batch with --adv-train pgd (default {_A.steps})",
            value_type=int,
            metavar="N",
        ),
        Option(
            "adv_ramp_epochs",
            float | None,
            None,
            f"grow epsilon linearly from 0 over the first EPOCHS epochs (default {_A.ramp_epochs:g})",
            value_type=float,
            metavar="EPOCHS",
        ),
        Option(
            "adv_relative_step",
            float | None,
            None,
            "step size of the training attack as a multiple of epsilon (default: 1.25 for fgsm-rs, "
            "2.5 / --adv-steps for pgd)",
            value_type=float,
            metavar="R",
        ),
    ),
    *_in(
        ROBUSTNESS,
        Option(
            "attack",
            list[str] | None,
            None,
            f"attacks on the held-out split after training: fgsm, pgd, or none (default {' '.join(_R.attacks)})",
            nargs="+",
            metavar="NAME",
        ),
        Option(
            "epsilons",
            list[float] | None,
            None,
            f"L-infinity epsilons on the pixel scale [0, 1] (default {' '.join(f'{e:g}' for e in _R.epsilons)})",
            value_type=float,
            nargs="+",
            metavar="EPS",
        ),
        Option(
            "pgd_steps",
            int | None,
            None,
            f"PGD steps, each 2.5 x eps / N, from a random start (default {_either(_R_CPU.pgd_steps, _R.pgd_steps)})",
            value_type=int,
            metavar="N",
        ),
        Option(
            "attack_images",
            int | None,
            None,
            f"attack the first N held-out images, the same at every epsilon "
            f"(default {_either(_R_CPU.num_images, _R.num_images)})",
            value_type=int,
            metavar="N",
        ),
    ),
    EXPORT_MODE,
    EXPORT_FORMATS,
    OUTPUT_DIR,
    EXPERIMENT,
    Option(
        "nproc",
        int,
        1,
        "data-parallel training on N processes (DistributedDataParallel through torchrun; gloo on the CPU, nccl on "
        "CUDA); --batch-size stays the global batch, each process trains on its share (default 1)",
        "multi-process training",
        value_type=int,
        metavar="N",
        in_config=False,
    ),
)

# --- digitflow gan: the GAN flow ---------------------------------------------------------------------------------

GAN = "GAN (defaults depend on the architecture)"
JUDGE = "judging the samples"
_G, _GE = GanTrainConfig(), GanEvalConfig()


def _by_arch(key: str) -> str:
    return " / ".join(f"{getattr(gan_train_defaults(a), key)} for {a}" for a in GAN_ARCH_DEFAULTS)


GAN_OPTIONS: tuple[Option, ...] = (
    dataclasses.replace(TRAIN, help=f"the real images the GAN learns from (default {_D.train})"),
    DATA_DIR,
    CACHE_DIR,
    OFFLINE,
    dataclasses.replace(
        TEST,
        help="held-out real images FID compares the samples with (default: the test split of the training "
        "dataset, or the rest of it when --train is a slice of it open at one end: "
        "mnist:test[:8000] -> mnist:test[8000:])",
    ),
    *_in(
        GAN,
        Option(
            "arch",
            str,
            _G.arch,
            "mlp: the study notes' fully connected GAN (z 100 -> 256 -> 512 -> 1024 -> 784, dropout in D); "
            f"dcgan: 2 transposed convolutions / 2 convolutions with batch norm (default {_G.arch})",
            metavar="{" + ",".join(choices_of(GanArch)) + "}",  # checked by digitflow.params.gan, in one line
        ),
        Option("epochs", int | None, None, f"(default {_by_arch('epochs')})", value_type=int),
        Option("batch_size", int | None, None, f"(default {_by_arch('batch_size')})", value_type=int),
        Option(
            "latent_dim", int, _G.latent_dim, f"size of the noise vector z (default {_G.latent_dim})", value_type=int
        ),
        Option(
            "width",
            int,
            _G.width,
            f"DCGAN channel width w: generator 2w -> w -> 1, discriminator 1 -> w -> 2w (default {_G.width})",
            value_type=int,
        ),
        Option(
            "real_label",
            float | None,
            None,
            "with --loss bce: the discriminator's target for real images; under 1 is one-sided label smoothing "
            f"(default {_by_arch('real_label')})",
            value_type=float,
            metavar="P",
        ),
        Option(
            "ema_decay",
            float | None,
            None,
            "keep an exponential moving average of the generator's weights and sample from it; 0 = off "
            f"(default {_by_arch('ema_decay')})",
            value_type=float,
            metavar="D",
        ),
        Option(
            "loss",
            str | None,
            None,
            "bce: the non-saturating loss (binary cross-entropy, --real-label applies); hinge: SN-GAN's hinge loss "
            f"(default {_by_arch('loss')})",
            choices=GAN_LOSSES,
        ),
        Option(
            "spectral_norm",
            bool | None,
            None,
            "DCGAN discriminator: spectral normalisation on every layer instead of batch norm (SN-GAN) "
            f"(default {_by_arch('spectral_norm')})",
            kind="toggle",
        ),
        Option(
            "amp",
            bool | None,
            None,
            f"bfloat16 autocast for the forward passes where the device has fast bfloat16 (default {_by_arch('amp')})",
            kind="toggle",
        ),
        SEED,
        DEVICE,
        dataclasses.replace(
            OPTIMIZER,
            annotation=str | None,
            default=None,
            help=f"any torch.optim class: SGD, Adam, AdamW, LBFGS, ... (default {_G.optimizer.name})",
        ),
        dataclasses.replace(
            OPTIMIZER_KWARGS,
            help="optimizer keyword argument, repeatable; adds to the defaults, which are torch's except "
            + "; ".join(f"for {a}: {_kwargs(gan_train_defaults(a).optimizer.kwargs)}" for a in GAN_ARCH_DEFAULTS)
            + " (the same optimizer and options for the generator and the discriminator)",
        ),
        LR,
        dataclasses.replace(
            PARAM_GROUPS,
            help="options for parameters whose name starts with PREFIX (mlp: net.0; dcgan generator: project, "
            "upsample; discriminator: net), repeatable",
        ),
        RESUME,
        dataclasses.replace(
            CHECKPOINT,
            help="checkpoint file written after every epoch and read by --resume "
            "(default: outputs/checkpoints/gan-<arch>-<hash of the training options>.pt)",
        ),
    ),
    *_in(
        JUDGE,
        Option(
            "judge",
            str | None,
            None,
            "the classifier that judges the samples: an MLflow model URI or registered alias, e.g. "
            "models:/digitflow-lenet@candidate, or a logged model models:/m-ID (default: train a LeNet on the same "
            "training data first, in its own child run)",
            metavar="URI",
        ),
        Option(
            "judge_epochs",
            int | None,
            None,
            "epochs for the judge the flow trains (default: the classifier's)",
            value_type=int,
        ),
        Option(
            "fid_images",
            int,
            _GE.num_images,
            f"generated, held-out and floor images per FID (default {_GE.num_images})",
            value_type=int,
            metavar="N",
        ),
        Option(
            "eval_every",
            int,
            _GE.every,
            f"judge every K epochs and after the last (default {_GE.every})",
            value_type=int,
            metavar="K",
        ),
        Option(
            "feature_layer",
            str,
            _GE.feature_layer,
            f"the judge's features FID compares: penultimate (LeNet: 500) or conv (800) (default {_GE.feature_layer})",
            choices=choices_of(FeatureLayer),
        ),
    ),
    dataclasses.replace(EXPORT_MODE, annotation=str, help="TorchScript: script or trace (default script)"),
    OUTPUT_DIR,
    dataclasses.replace(EXPERIMENT, default="digitflow-gan", help="MLflow experiment name (default digitflow-gan)"),
)

# --- digitflow sweep: its own options (the run's options it fixes for every trial follow) ----------------------

SEARCH = "search"
WHERE = "where trials run"

SWEEP_OPTIONS: tuple[Option, ...] = (
    Option(
        "space",
        list[str],
        REQUIRED,
        "what --random and --optuna draw from: ranges or lists, KEY=RANGE (with --grid, the grid's KEY=A,B)",
        SEARCH,
        nargs="+",
        metavar="KEY=RANGE",
    ),
    Option("kind", Literal["grid", "random", "optuna"], "grid", "grid, random or optuna", flag=None),
    Option("trials", int | None, None, "trials of a random or Optuna search", flag=None),
    Option(
        "metric",
        str,
        "test/accuracy",
        "what picks the best trial: test/accuracy, test/loss, cross/usps/accuracy, ... (default test/accuracy)",
        SEARCH,
        metavar="KEY",
    ),
    Option(
        "direction",
        str | None,
        None,
        "maximize or minimize the metric (default: maximize accuracies)",
        SEARCH,
        choices=("maximize", "minimize"),
    ),
    Option("fixed", dict[str, Any] | None, None, "digitflow run's options for every trial", flag=None),
    Option(
        "runner",
        str,
        "threads",
        "threads in this process (default), a Dask cluster (prefect-dask) or Ray (prefect-ray, optional)",
        WHERE,
        choices=("threads", "dask", "ray"),
    ),
    Option(
        "workers",
        int | None,
        None,
        "trials at once (default: one per core); each gets cores/N torch threads",
        WHERE,
        value_type=int,
        metavar="N",
    ),
    Option(
        "study",
        str | None,
        None,
        "Optuna study name (default: sweep-<hash of the sweep's options>)",
        WHERE,
        metavar="NAME",
    ),
    Option(
        "storage",
        str | None,
        None,
        "Optuna storage (default: sqlite optuna.db beside the MLflow SQLite store, else in --output-dir)",
        WHERE,
        metavar="URL",
    ),
    Option(
        "resume", bool, False, "continue an interrupted sweep: finished trials are not run again", WHERE, kind="flag"
    ),
    Option("prune", bool, True, "--optuna: stop unpromising trials early (default: on)", SEARCH, kind="toggle"),
    Option("sampler_seed", int, 0, "seed of the random and Optuna samplers (default 0)", SEARCH, value_type=int),
    Option(
        "export_best",
        bool,
        True,
        "export and register the best trial's model (default: on)",
        SEARCH,
        kind="toggle",
        flag="--export",
    ),
    EXPERIMENT,
)

# --- digitflow promote ---------------------------------------------------------------------------------------

_P = PromotionConfig()
WHICH = "which pipeline run (one of the two)"

PROMOTE_OPTIONS: tuple[Option, ...] = (
    Option("run_id", str | None, None, "the MLflow parent run of the pipeline run", WHICH, metavar="ID"),
    Option(
        "flow_run_id",
        str | None,
        None,
        "the Prefect flow run of the pipeline run (its MLflow tag prefect.flow_run_id)",
        WHICH,
        metavar="ID",
    ),
    Option(
        "margin",
        float,
        _P.margin,
        f"a figure is better or worse only by more than this, absolute (default {_P.margin:g})",
        value_type=float,
    ),
    Option(
        "figures",
        list[str] | None,
        None,
        f"metric (fnmatch pattern) to compare, repeatable (default: {' '.join(_P.figures)})",
        kind="repeat",
        metavar="PATTERN",
        flag="--figure",
    ),
    Option("alias", str, _P.champion_alias, f"the alias to move (default {_P.champion_alias})"),
)

# --- digitflow predict: an exported model scores a dataset spec -------------------------------------------------

PREDICTION = "what to predict"
DEFAULT_MODEL_URI = f"models:/{_P.registered_model_name}@{_P.champion_alias}"

PREDICT_OPTIONS: tuple[Option, ...] = (
    # the one without a default first: a flow's parameters with defaults follow those without
    Option(
        "input",
        str,
        REQUIRED,
        "the images: any dataset spec, e.g. folder:DIR (a sub-folder per class, or unlabeled images), csv:FILE "
        "(with or without labels), idx:DIR, mnist:test",
        PREDICTION,
        metavar="SPEC",
        spec=True,
    ),
    Option(
        "model",
        str,
        DEFAULT_MODEL_URI,
        "the model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/torchscript-model, or an exported "
        f".pt / .pt2 file or MLflow model folder (default {DEFAULT_MODEL_URI})",
        PREDICTION,
        metavar="URI",
    ),
    Option(
        "output",
        str,
        "predictions.csv",
        "the predictions, a CSV row per image: image, label, confidence, p_<class> (default predictions.csv)",
        PREDICTION,
        metavar="FILE",
    ),
    Option(
        "submission",
        str | None,
        None,
        "also write Kaggle's ImageId,Label submission here (default: for a csv: input, beside --output as "
        "<stem>-submission.csv)",
        PREDICTION,
        metavar="FILE",
    ),
    Option("batch_size", int, 2048, "images per forward pass (default 2048)", PREDICTION, value_type=int, metavar="N"),
    *_in(DATA, DATA_DIR, CACHE_DIR, OFFLINE),
    dataclasses.replace(
        EXPERIMENT, default="digitflow-predict", help="MLflow experiment name (default digitflow-predict)"
    ),
)

# Options of digitflow run a sweep does not take as fixed settings of its trials: the sweep has its own
# experiment and resume, trials checkpoint where the sweep says, and they train in one process each.
NOT_SWEPT = ("experiment", "resume", "checkpoint", "nproc")
SWEEP_FIXED_OPTIONS: tuple[Option, ...] = tuple(o for o in RUN_OPTIONS if o.name not in NOT_SWEPT)

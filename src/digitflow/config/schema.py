"""Typed configuration, one dataclass per concern. Every default lives here and only here.

The CLI and the Prefect flow build a :class:`RunConfig` from their options; the core functions take
the piece they need (``TrainConfig``, ``AugmentConfig``, ...). :func:`flatten` turns a config into the
``section.key`` dict that MLflow records as params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

TargetPreprocess = Literal["mnist-frame", "resize"]  # the keys of digitflow.data.framing.PREPROCESSORS
ExportMode = Literal["script", "trace"]  # torch.jit.script or torch.jit.trace
# the exported files: TorchScript lenet.pt, torch.export lenet.pt2, AOTInductor package lenet.aoti.pt2
ExportFormat = Literal["torchscript", "export", "aoti"]


@dataclass(frozen=True)
class DataConfig:
    """Which data, where it lives, and how cross-domain targets are framed."""

    train: str = "mnist:train"
    test: str = "mnist:test"
    targets: tuple[str, ...] = ("usps:test",)
    data_dir: str = "data"  # the CLI resolves $DIGITFLOW_DATA_DIR first
    cache_dir: str = ".cache/digitflow"  # transformed uint8 tensors, keyed by content hash
    offline: bool = False
    target_preprocess: TargetPreprocess = "mnist-frame"  # or "resize" (bicubic 16x16 -> 28x28)


# Cross-domain targets by training dataset, used when a run names none (DataConfig.targets is MNIST's):
# the other digit domain for MNIST and USPS, none for clothing (Fashion-MNIST) and Japanese characters
# (KMNIST), which have no counterpart with the same classes. digitflow/params/run.py applies it.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "mnist": ("usps:test",),
    "usps": ("mnist:test",),
    "fashion-mnist": (),
    "kmnist": (),
}


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, drawn independently for every image on the training device."""

    # Defaults chosen by a sweep (scripts/sweep.py; docs/cross-domain.md "The defaults are tuned for the domain
    # gap"): a mild affine gave the best held-out MNIST and USPS accuracy; a stronger one lowered both, and elastic
    # distortion added nothing at alpha 10 and cost accuracy at 34, so it is available but off.
    affine: bool = True
    degrees: float = 10.0  # rotation range, +/- degrees
    translate: float = 0.08  # fraction of the image size, +/-
    scale_min: float = 0.9
    scale_max: float = 1.1
    shear: float = 5.0  # +/- degrees
    elastic: bool = False
    elastic_alpha: float = 10.0  # displacement magnitude, pixels
    elastic_sigma: float = 4.0  # smoothness of the displacement field, pixels
    hflip: bool = False  # mirror left-right, half of the images (not for digits: a mirrored 3 is no digit)
    extra: tuple[str, ...] = ()  # torchvision.transforms.v2 class names, e.g. "RandomErasing"


# The augmentation a run gets when it names none, by the family of its training dataset (docs/training.md
# "Default augmentation per dataset family"; measured with scripts/sweep.py). Handwriting: the mild
# affine above, tuned for MNIST -> USPS; KMNIST (handwritten characters) gets it too, unmeasured (no
# KMNIST files on the development machines). Clothing: none, which in the default 6 epochs on all of
# Fashion-MNIST beat a horizontal flip, a translation and the mild affine (0.922 vs 0.920, 0.912, 0.903).
DATASET_FAMILIES: dict[str, str] = {
    "mnist": "handwriting",
    "usps": "handwriting",
    "kmnist": "handwriting",
    "fashion-mnist": "clothing",
}
AUGMENT_BY_FAMILY: dict[str, AugmentConfig] = {
    "handwriting": AugmentConfig(),
    "clothing": AugmentConfig(affine=False),
}


@dataclass(frozen=True)
class OptimizerConfig:
    """Any ``torch.optim`` optimizer by class name, with keyword arguments.

    ``param_groups`` maps a parameter-name prefix (e.g. ``"classifier"``) to options that override
    ``kwargs`` for the parameters under it; the rest form the default group.
    """

    name: str = "SGD"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"lr": 0.05, "momentum": 0.9})
    param_groups: dict[str, dict[str, Any]] = field(default_factory=dict)


# Options and batch size for an optimizer other than the default one, when a run gives none (any
# optimizer not listed gets torch's defaults and TrainConfig.batch_size). LBFGS with torch's defaults
# (lr 1, no line search, 20 iterations a step) on batches of 64 diverges in the first epoch; with a
# strong-Wolfe line search, 5 iterations a step and batches of 1000 it trains (docs/training.md "LBFGS":
# 0.983 held-out on mnist:test[8000:] after 6 epochs on mnist:test[:8000]).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "LBFGS": {"line_search_fn": "strong_wolfe", "max_iter": 5},
}
BATCH_SIZE_BY_OPTIMIZER: dict[str, int] = {"LBFGS": 1000}


@dataclass(frozen=True)
class SchedulerConfig:
    """Any ``torch.optim.lr_scheduler`` class by name (stepped once per epoch), or None for none.

    A horizon argument the class takes (``T_max``, ``total_iters``, ``total_steps``) defaults to the
    number of epochs, so the default cosine schedule anneals over the whole run whatever its length.
    """

    name: str | None = "CosineAnnealingLR"
    kwargs: dict[str, Any] = field(default_factory=dict)


AdversarialMode = Literal["fgsm-rs", "pgd"]  # how adversarial training perturbs a batch (training/adversarial.py)


@dataclass(frozen=True)
class AdversarialTrainingConfig:
    """Adversarial training: each batch is replaced by its adversarial images (L-infinity, pixel space).

    ``mode`` None trains on clean images. "fgsm-rs": FGSM from a uniform random start in the epsilon
    ball, one step of ``1.25 * eps`` (Wong et al. 2020); "pgd": ``steps`` steps of ``2.5 * eps /
    steps`` from a random start (Madry et al. 2018). ``relative_step`` (step size / epsilon) None
    takes those. Epsilon grows linearly from 0 over the first ``ramp_epochs`` epochs (0: the full
    epsilon from the first batch); the step size follows it.
    """

    mode: AdversarialMode | None = None
    eps: float = 0.1
    steps: int = 7  # PGD steps per batch; FGSM-RS takes one
    relative_step: float | None = None
    ramp_epochs: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the model, epochs, batches, seed, device, optimizer, schedule, augmentation."""

    # a built-in model (digitflow.models.factory.BUILTIN_MODELS: lenet, minivgg) or package.module:Factory, a
    # function or class taking the number of classes whose module maps (N, 1, 28, 28) in [0, 1] to (N, classes) logits
    model: str = "lenet"
    epochs: int = 6
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # "auto" = cuda, then mps, then cpu; or any torch device string
    amp: bool = True  # bfloat16 autocast where it is faster: CUDA, CPUs with AVX512-BF16/AMX
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 to 1
    cuda_graphs: bool = False  # replay each step as one CUDA graph (CUDA only; digitflow.training.cuda_graph)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    adversarial: AdversarialTrainingConfig = field(default_factory=AdversarialTrainingConfig)


# What a CUDA device trains with by default where it differs from TrainConfig's CPU defaults. On a GPU
# a batch-64 LeNet step is all launch overhead, so the step is replayed as one CUDA graph and the
# batch grows, with the learning rate; label smoothing and two more epochs of the cosine schedule make
# 0.99 on the 8k protocol reliable at that batch. bfloat16 autocast is off: for a network this small
# its cast kernels cost more than its faster convolutions save (float32, TF32 convolutions, trained
# 1.2-1.3x more images/s at every batch size). Chosen by measurement on an H200 (docs/training.md "Training
# on a GPU"; scripts/gpu_explore.py prints the comparison); explicit options always win.
CUDA_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 512,
    "amp": False,
    "label_smoothing": 0.1,
    "optimizer": OptimizerConfig(kwargs={"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "cuda_graphs": True,
}


# What a built-in model trains with where it differs from the device's defaults above (explicit options always
# win; a model of one's own gets the device's). MiniVGG gains from epochs where LeNet has stopped gaining: on the
# standard protocol (seed 0) 0.9955 after 6 epochs and 0.9959 after 10 (seeds 0-2: 0.9958 on average), at 1.7x
# LeNet's time per epoch on the 2-core CPU; weight decay, label smoothing, a learning rate of 0.1 with Nesterov
# momentum or dropout did not help (docs/models.md "How MiniVGG was chosen").
MODEL_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {"minivgg": {"epochs": 10}}


def train_defaults(device_type: str, model: str = "lenet") -> TrainConfig:
    """The default training settings of ``model`` on a device of this type ("cpu", "cuda", "mps")."""
    defaults = TrainConfig(model=model)
    if device_type == "cuda":
        defaults = dataclasses.replace(defaults, **CUDA_TRAIN_DEFAULTS)
    return dataclasses.replace(defaults, **MODEL_TRAIN_DEFAULTS.get(model, {}))


AdaptMethod = Literal["dann"]  # domain adaptation methods (digitflow.training.dann)


@dataclass(frozen=True)
class AdaptConfig:
    """Unsupervised domain adaptation to unlabeled target images (``--adapt dann --adapt-target SPEC``).

    DANN (Ganin and Lempitsky 2015): a domain classifier on the model's features behind a gradient
    reversal layer whose weight ramps up as ``domain_weight * (2 / (1 + exp(-gamma * p)) - 1)``,
    ``p`` the fraction of training steps done. Only the target's images are read, never its labels.
    """

    method: AdaptMethod | None = None  # None: no adaptation (source-only training)
    target: str | None = None  # dataset spec of the unlabeled target images, e.g. usps:test[:1000]
    domain_hidden: int = 500  # width of the domain classifier's two hidden layers
    domain_weight: float = 0.3  # gradient reversal weight lambda reaches (1 cost MNIST accuracy: docs/cross-domain.md)
    gamma: float = 10.0  # steepness of the lambda ramp (Ganin's 10)
    target_augment: bool = True  # augment target images like the source ones
    pseudo_label_threshold: float = 0.8  # target predictions at least this confident become labels
    pseudo_label_weight: float = 1.0  # weight of the pseudo-label loss (ramped like lambda); 0: off
    teacher_ema: float = 0.0  # >0: pseudo-labels from a mean teacher with this weight decay; 0: the model's own
    target_batch_norm: bool = True  # AdaBN: the model evaluated on the target domain uses its statistics


@dataclass(frozen=True)
class ExportConfig:
    """TorchScript / torch.export export, verification and registration."""

    mode: ExportMode = "script"  # "script" or "trace"
    # the files written, in this order: torchscript (always: it is what gets registered), export (torch.export), aoti
    # (the torch.export program compiled ahead of time by AOTInductor: needs a C++ compiler, tens of seconds on a CPU)
    formats: tuple[ExportFormat, ...] = ("torchscript", "export")
    verify_images: int = 256
    max_abs_diff: float = 1e-5
    # the AOTInductor package's limit: its fused kernels sum in another order than eager's (LeNet: 4e-6)
    aoti_max_abs_diff: float = 1e-4
    latency_repeats: int = 50
    # seconds per model and batch size at most (warm-up included), then the median of the passes so far: a
    # batch of 256 takes milliseconds a pass on a CPU, and 60 passes of three models cost 4 s of every run;
    # 0.1 s still gives 10-20 passes of the largest batch and hundreds of batch 1 (the run-cost issue)
    latency_budget_s: float = 0.1
    registered_model_name: str = "digitflow-lenet"  # a run's follows its model: digitflow-<model name>
    alias: str = "candidate"


@dataclass(frozen=True)
class PromotionConfig:
    """When a pipeline run's registered model takes the ``champion`` alias (digitflow.evaluation.promotion).

    ``figures`` are metric-name patterns (``fnmatch``: ``cross/*/accuracy`` is every cross-domain
    target's accuracy). A figure is better or worse only by more than ``margin`` (absolute, in the
    metric's units): the candidate is promoted when none is worse and at least one is better, so
    retraining the same model, whose figures move by noise alone, leaves the champion where it is.
    """

    figures: tuple[str, ...] = ("test/accuracy", "cross/*/accuracy")
    margin: float = 0.001  # a tenth of a percentage point of accuracy
    registered_model_name: str = ExportConfig.registered_model_name
    champion_alias: str = "champion"


@dataclass(frozen=True)
class RobustnessConfig:
    """The robustness evaluation after training: the held-out images under FGSM and PGD attacks
    (L-infinity, pixel space [0, 1]; :mod:`digitflow.evaluation.attacks`) at each epsilon. ``attacks`` empty:
    no evaluation. The parent run gets PGD's accuracy at ``headline_eps`` (``robust/pgd/accuracy_eps10``)."""

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    pgd_steps: int = 20
    pgd_step_size: float | None = None  # None: 2.5 * eps / pgd_steps
    random_start: bool = True
    # The first N held-out images; None: all. 2,000 (the 8k protocol's whole held-out split) keep the
    # curve's standard error near 1 point; all 10,000 of mnist:test would take five times as long.
    num_images: int | None = 2000
    headline_eps: float = 0.1


# What a run attacks with by default where it is not on CUDA: the same curve (seven epsilons, FGSM and
# PGD, the same images at every epsilon) on 1,000 images with PGD-10, so that on a CPU the step costs a
# fraction of training instead of more than it (docs/measurements.md "Robustness of the default model"); the headline's
# standard error is logged beside it. On CUDA the whole curve is cheap and stays the default.
CPU_ROBUSTNESS_DEFAULTS: dict[str, Any] = {"num_images": 1000, "pgd_steps": 10}


def robustness_defaults(device_type: str) -> RobustnessConfig:
    """The default robustness evaluation on a device of this type ("cpu", "cuda", "mps")."""
    if device_type == "cuda":
        return RobustnessConfig()
    return dataclasses.replace(RobustnessConfig(), **CPU_ROBUSTNESS_DEFAULTS)


@dataclass(frozen=True)
class RunConfig:
    """Everything one pipeline run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    output_dir: str = "outputs"  # checkpoints and exported files, one folder per run
    checkpoint: str | None = None  # None: output_dir/checkpoints/<model>-<settings hash>.pt (lenet-...)
    resume: bool = False


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts/lists (JSON- and ``weights_only``-safe)."""
    plain: dict[str, Any] = _plain(dataclasses.asdict(config))
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``RunConfig(train=TrainConfig(epochs=3))`` -> ``{"train.epochs": 3, ...}``.

    Nested dicts (optimizer kwargs, param groups) are flattened too, so every value is a scalar, a
    list, None, or an empty dict (kept, so that "no scheduler kwargs" still shows up as a param).
    """
    tree = to_dict(config) if dataclasses.is_dataclass(config) else config
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


# --- the GAN flow (digitflow gan) -------------------------------------------------------------------------------

GanArch = Literal["mlp", "dcgan"]  # the keys of digitflow.models.gan.build_gan


GAN_LOSSES = ("bce", "hinge")


@dataclass(frozen=True)
class GanTrainConfig:
    """How to train a GAN. Architecture-dependent defaults are in :data:`GAN_ARCH_DEFAULTS`.

    Both networks get the same optimizer (``optimizer``); per batch the discriminator takes one step on a
    batch of real images and one of detached generated ones, then the generator one step (``loss``).
    """

    arch: GanArch = "dcgan"
    latent_dim: int = 100
    # DCGAN channel width w (generator 2w -> w -> 1, discriminator 1 -> w -> 2w; MLP: unused), batch, loss and
    # spectral norm: chosen by 50-epoch probes on the 8k protocol (docs/measurements.md "How the GAN defaults were
    # chosen", scripts/gan_bench.py). With the bce loss and batch norm every setting tried (batch 32 or 64, width
    # 32 or 64, a moving average, minibatch-std) stayed at class entropy 2.22-2.25; the hinge loss with a spectrally
    # normalised discriminator (SN-GAN) reached 2.26-2.27 at FID/floor 2.6-2.8. Width 64 gains a little FID for
    # twice the time.
    width: int = 32
    # 60 epochs meet the GAN targets with margin on the 8k protocol (FID at most 3x its floor, coverage 10/10,
    # entropy at least 2.25): 30 gave 3.61x and 2.223; 50 gave 2.93x and 2.261 with little margin; in a 100-epoch
    # run every epoch from 51 on stayed under 2.91x and at 2.257 nats or more (docs/measurements.md "The GAN").
    # About 3.6 s an epoch on the 2-core CPU: 60 epochs train in under 4 minutes.
    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast for the forward passes where the device has fast bfloat16 (1.4-2x here)
    # the discriminator's target for real images with the bce loss (under 1: one-sided label smoothing); the
    # hinge loss has no labels, and 1 is the only value that goes with it
    real_label: float = 1.0
    # exponential moving average of the generator's weights (0 = off); samples use it. Off by default: at
    # 0.999 it did not help on the 8k protocol (FID/floor 2.97 vs 2.90, entropy 2.224 vs 2.228 after 50 epochs)
    ema_decay: float = 0.0
    loss: Literal["bce", "hinge"] = "hinge"  # bce: the non-saturating loss (with real_label); hinge: SN-GAN's
    spectral_norm: bool = True  # DCGAN discriminator: spectral normalisation instead of batch norm (SN-GAN)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="Adam", kwargs={"lr": 2e-4, "betas": [0.5, 0.999]})
    )


# What each architecture trains with when a run does not say: the MLP GAN exactly as the PyTorch study
# notes have it (Adam 1e-4 with torch's betas, batch 100, BCE without label smoothing), the DCGAN with the
# DCGAN paper's Adam settings and SN-GAN's hinge loss and discriminator. Explicit options always win.
GAN_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {
        "epochs": 80,
        "batch_size": 100,
        "real_label": 1.0,
        "loss": "bce",
        "spectral_norm": False,
        "ema_decay": 0.0,
        "amp": False,
        "optimizer": OptimizerConfig(name="Adam", kwargs={"lr": 1e-4}),
    },
    "dcgan": {},  # GanTrainConfig's own defaults
}


def gan_train_defaults(arch: str) -> GanTrainConfig:
    """The default GAN training settings for ``arch``."""
    return dataclasses.replace(GanTrainConfig(arch=arch), **GAN_ARCH_DEFAULTS.get(arch, {}))  # type: ignore[arg-type]


FeatureLayer = Literal["penultimate", "conv"]  # the judge's features FID compares (LeNet: 500 or 800 values)


@dataclass(frozen=True)
class GanEvalConfig:
    """How generated digits are judged, every ``every`` epochs and at the end."""

    judge: str | None = None  # an MLflow model URI (models:/digitflow-lenet@candidate, runs:/...); None: train one
    judge_epochs: int | None = None  # for a judge trained by the flow; None: the classifier's default
    num_images: int = 2000  # N generated, N held-out real, N training images for the floor
    feature_layer: FeatureLayer = "penultimate"  # of the judge (LeNet: 500 or 800 values)
    every: int = 1  # evaluate every this many epochs (and always after the last)
    min_class_share: float = 0.02  # a class is covered when at least this share of the samples is predicted as it
    collapse_coverage: int = 5  # final coverage under this: mode collapse
    collapse_d_loss: float = 0.05  # discriminator loss within this of its minimum for a whole epoch: collapse
    grid_images: int = 100  # samples per epoch grid, from one fixed noise batch


@dataclass(frozen=True)
class GanConfig:
    """Everything one GAN flow run needs."""

    data: DataConfig = field(default_factory=lambda: DataConfig(targets=()))
    train: GanTrainConfig = field(default_factory=GanTrainConfig)
    evaluation: GanEvalConfig = field(default_factory=GanEvalConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(registered_model_name="digitflow-gan-generator"))
    output_dir: str = "outputs"
    checkpoint: str | None = None  # None: output_dir/checkpoints/gan-<arch>-<settings hash>.pt
    resume: bool = False

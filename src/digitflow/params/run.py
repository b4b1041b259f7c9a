"""Flow parameters -> one typed :class:`RunConfig`. Defaults come from ``digitflow.config`` only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from digitflow.config import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    DATASET_FAMILIES,
    DEFAULT_TARGETS,
    OPTIMIZER_DEFAULTS,
    AdaptConfig,
    AdversarialTrainingConfig,
    AugmentConfig,
    DataConfig,
    ExportConfig,
    ExportFormat,
    OptimizerConfig,
    RobustnessConfig,
    RunConfig,
    SchedulerConfig,
    TrainConfig,
    robustness_defaults,
    to_dict,
    train_defaults,
)
from digitflow.config.options import RUN_OPTIONS, choices_of, complete
from digitflow.data import DATASETS, DatasetSpec, parse_spec
from digitflow.data.framing import MODEL_SIZE, frame_images, get_preprocessor
from digitflow.data.own import classes_of, has_labels, unlabeled_reason
from digitflow.device import resolve_device
from digitflow.errors import ConfigError, DataError
from digitflow.evaluation.attacks import ATTACKS
from digitflow.models.factory import (
    check_model,
    check_spec,
    create_model,
    model_label,
    model_name,
    registered_model_name,
)
from digitflow.training.augment import build_augment
from digitflow.training.classifier import resumable_settings
from digitflow.training.cuda_graph import graph_unsupported_reason
from digitflow.training.dann import DANN_CONTRACT, dann_unsupported_reason
from digitflow.training.optim import build_optimizer, build_scheduler

DATA_DIR_ENV = "DIGITFLOW_DATA_DIR"
GEOMETRIC_AUGMENTS = ("affine", "elastic", "hflip")  # the AugmentConfig switches, by name


def default_data_dir() -> str:
    """``$DIGITFLOW_DATA_DIR``, else ``DataConfig.data_dir`` (``./data``)."""
    return os.environ.get(DATA_DIR_ENV) or DataConfig.data_dir


# What a run that leaves test, target, augmentation, optimizer options or batch size unset gets: the
# rules below, applied by build_config, so the CLI, the flow and the deployments share them. Training
# settings also depend on the device the run trains on (config.train_defaults).


def default_test(train: str) -> str:
    """The held-out split for ``train``: its dataset's test split, or, when ``train`` is a slice of
    that split open at one end, the rest of it (``mnist:test[:8000]`` -> ``mnist:test[8000:]``)."""
    spec = parse_spec(train)
    if spec.is_own:  # a user's own files hold out a seeded part of themselves (own_holdout)
        return str(own_holdout(train)[1])
    if spec.split == "test" and (spec.start is None) != (spec.stop is None):
        rest = (
            DatasetSpec(spec.name, "test", start=spec.stop)
            if spec.start is None
            else DatasetSpec(spec.name, "test", stop=spec.start)
        )
        return str(rest)
    return f"{spec.name}:test"


def own_holdout(train: str) -> tuple[DatasetSpec, DatasetSpec]:
    """A user's own training files without ``--test``: the spec's ``split=train`` side and its
    ``split=test`` side (the seeded 10% hold-out, whole). A spec that already names a side keeps it."""
    spec = parse_spec(train)
    whole = DatasetSpec(spec.name, "all", path=spec.path, options=spec.options)
    if spec.split == "all":
        return spec.with_split("train"), whole.with_split("test")
    held = DatasetSpec(spec.name, "test", path=spec.path, options=spec.options)
    return spec, held


def default_targets(train: str) -> list[str]:
    """The cross-domain targets for ``train``'s dataset (``config.DEFAULT_TARGETS``); none for own files."""
    spec = parse_spec(train)
    return [] if spec.is_own else list(DEFAULT_TARGETS[spec.name])


def augment_family(train: str) -> str:
    """The dataset family of ``train``, which picks its default augmentation (``config.DATASET_FAMILIES``);
    a user's own files are taken to be handwriting (digits, the project's subject)."""
    spec = parse_spec(train)
    return "handwriting" if spec.is_own else DATASET_FAMILIES[spec.name]


def check_classes(train: str, others: list[str]) -> None:
    """A one-line DataError if a test or target set has other classes than the training set, where one of
    them is a user's own (the registered datasets keep their cross-vocabulary tests); or if a training or
    test set has no labels (a CSV file without its label column, a folder without class sub-folders)."""
    train_spec = parse_spec(train)
    classes = classes_of(train_spec)
    for text in (train, *others):
        spec = parse_spec(text)
        if spec.is_own and not has_labels(spec):
            raise DataError(unlabeled_reason(spec))
        if spec is not train_spec and (spec.is_own or train_spec.is_own) and classes_of(spec) != classes:
            theirs = classes_of(spec)
            raise DataError(
                f"the classes of {text} ({len(theirs)}: {', '.join(theirs[:3])}, ...) are not those of {train} "
                f"({len(classes)}: {', '.join(classes[:3])}, ...); test on data of the same classes"
            )


def augment_names(config: AugmentConfig) -> list[str]:
    """An AugmentConfig as ``--augment`` names (magnitudes aside)."""
    return [name for name in GEOMETRIC_AUGMENTS if getattr(config, name)] + list(config.extra)


def default_optimizer_kwargs(optimizer: str, defaults: TrainConfig | None = None) -> dict[str, Any]:
    """Options of ``optimizer`` when none are given: the project's for SGD (those of the device's
    ``defaults``, CPU ones if None) and LBFGS, torch's for the rest."""
    defaults = defaults or TrainConfig()
    if optimizer == defaults.optimizer.name:
        return dict(defaults.optimizer.kwargs)
    return dict(OPTIMIZER_DEFAULTS.get(optimizer, {}))


def default_batch_size(optimizer: str, defaults: TrainConfig | None = None) -> int:
    """The device's default batch (``defaults``, CPU ones if None), or the larger batch an optimizer
    such as LBFGS needs."""
    return BATCH_SIZE_BY_OPTIMIZER.get(optimizer, (defaults or TrainConfig()).batch_size)


def check_experiment(name: str, how_to_change: str = "--experiment NAME") -> None:
    """A ConfigError unless ``name`` can name an MLflow experiment."""
    if not name.strip():
        raise ConfigError(f"the MLflow experiment name is empty; name one with {how_to_change}")


def check_output_dir(path: str, how_to_change: str = "--output-dir DIR") -> None:
    """Create ``path`` if need be and make sure files can be written in it; a one-line ConfigError if not.

    Done before the run starts, so an unusable folder is reported in one line, not as a traceback
    from the first checkpoint minutes later.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot write to the output dir {path} ({reason}); choose another with {how_to_change}"
        ) from None


def build_config(**options: Any) -> RunConfig:
    """Validate and assemble the run's config from the flat options of ``digitflow run``
    (:data:`digitflow.config.options.RUN_OPTIONS`: the flow's parameters, by name; those not given take
    their defaults, an unknown name is a one-line ConfigError). Raises a one-line ConfigError/DataError
    on bad input.

    Everything that can be checked without data is checked here (specs, device, optimizer, scheduler,
    augmentation, sizes), so a typo fails in a second, before any download or training. None means
    the default that follows ``train`` (test split, targets, augmentation), ``optimizer`` (batch size
    for LBFGS) or the device the run trains on (:func:`digitflow.config.train_defaults`: a CUDA device
    trains with a larger batch, CUDA graphs, ...). ``optimizer_kwargs`` (and ``lr``, which wins over
    them) add to the optimizer's defaults (the device's for SGD, the project's for LBFGS, torch's for the
    rest). The config records the values used.
    """
    o = complete(RUN_OPTIONS, options, "digitflow run")
    train, optimizer, cuda_graphs = o["train"], o["optimizer"], o["cuda_graphs"]
    target_preprocess, augment = o["target_preprocess"], o["augment"]
    parse_spec(train)
    test = default_test(train) if o["test"] is None else o["test"]
    target = default_targets(train) if o["target"] is None else o["target"]
    for spec in (test, *target):
        parse_spec(spec)
    if parse_spec(train).is_own and o["test"] is None:  # train on the rest of the held-out files
        train = str(own_holdout(train)[0])
    check_classes(train, [test, *target])
    model = checked_model(o["model"], len(classes_of(parse_spec(train))))
    device_type = resolve_device(o["device"]).type
    defaults = train_defaults(device_type, o["model"])
    epochs = defaults.epochs if o["epochs"] is None else o["epochs"]
    batch_size = default_batch_size(optimizer, defaults) if o["batch_size"] is None else o["batch_size"]
    amp = defaults.amp if o["amp"] is None else o["amp"]
    label_smoothing = defaults.label_smoothing if o["label_smoothing"] is None else o["label_smoothing"]
    optimizer_kwargs = {**default_optimizer_kwargs(optimizer, defaults), **(o["optimizer_kwargs"] or {})}
    if o["lr"] is not None:
        optimizer_kwargs["lr"] = o["lr"]
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch size must be at least 1 (got epochs={epochs}, batch size={batch_size})")
    if o["export_mode"] not in ("script", "trace"):
        raise ConfigError(f"unknown export mode {o['export_mode']!r}; valid modes: script, trace")
    get_preprocessor(target_preprocess)
    if augment is None:
        augment_config = AUGMENT_BY_FAMILY[augment_family(train)]
    else:
        augment_config = AugmentConfig(
            affine="affine" in augment,
            elastic="elastic" in augment,
            hflip="hflip" in augment,
            extra=tuple(a for a in augment if a not in GEOMETRIC_AUGMENTS),
        )
    robustness = robustness_config(
        o["attack"], o["epsilons"], o["pgd_steps"], o["attack_images"], robustness_defaults(device_type)
    )
    adversarial = adversarial_training_config(
        o["adv_train"], o["adv_eps"], o["adv_steps"], o["adv_ramp_epochs"], o["adv_relative_step"]
    )
    config = RunConfig(
        data=DataConfig(
            train=train,
            test=test,
            targets=tuple(target),
            target_preprocess=target_preprocess,
            data_dir=o["data_dir"] or default_data_dir(),
            cache_dir=o["cache_dir"],
            offline=o["offline"],
        ),
        train=TrainConfig(
            model=o["model"],
            epochs=epochs,
            batch_size=batch_size,
            seed=o["seed"],
            device=o["device"],
            amp=amp,
            label_smoothing=label_smoothing,
            cuda_graphs=defaults.cuda_graphs if cuda_graphs is None else cuda_graphs,
            optimizer=OptimizerConfig(
                name=optimizer, kwargs=optimizer_kwargs, param_groups=dict(o["param_groups"] or {})
            ),
            scheduler=SchedulerConfig(
                name=None if o["scheduler"] in (None, "", "none") else o["scheduler"],
                kwargs=dict(o["scheduler_kwargs"] or {}),
            ),
            augment=augment_config,
            adversarial=adversarial,
        ),
        export=ExportConfig(
            mode=o["export_mode"],
            formats=export_formats(o["export_formats"]),
            registered_model_name=registered_model_name(o["model"]),
        ),
        robustness=robustness,
        output_dir=o["output_dir"],
        checkpoint=o["checkpoint"],
        resume=o["resume"],
    )
    _dry_build(config.train, model, cuda_graphs_asked=cuda_graphs is True)
    if o["adapt"] is not None or o["adapt_target"] is not None or o["adapt_options"]:
        config = dataclasses.replace(
            config,
            adapt=adapt_config(train, target_preprocess, o["adapt"], o["adapt_target"], o["adapt_options"]),
        )
        reason = dann_unsupported_reason(model)
        if reason is not None:
            raise ConfigError(
                f"--adapt dann needs {DANN_CONTRACT}; the model {model_label(o['model'])} does not have one: "
                f"{reason} (docs/models.md)"
            )
        if optimizer == "LBFGS":  # DannStep takes one plain optimizer step per batch, no closure
            raise ConfigError("--adapt does not work with --optimizer LBFGS; choose another optimizer")
        if adversarial.mode is not None:  # DannStep trains on clean images; one of the two would be ignored
            raise ConfigError("--adapt and --adv-train cannot be combined yet; choose one of them")
    return config


# --- domain adaptation (--adapt dann --adapt-target SPEC): checked here, before any data or training ---

ADAPT_METHODS = ("dann",)


def adapt_config(
    train: str,
    target_preprocess: str,
    method: str | None,
    target: str | None,
    options: dict[str, Any] | None = None,
) -> AdaptConfig:
    """The run's :class:`AdaptConfig`; a one-line ConfigError for an option without ``--adapt``, an
    unknown method or option, or a target whose classes or image size do not fit the training data."""
    if method is None:
        given = "--adapt-target" if target is not None else "--adapt-opt"
        raise ConfigError(f"{given} needs --adapt METHOD ({', '.join(ADAPT_METHODS)})")
    if method not in ADAPT_METHODS:
        raise ConfigError(f"unknown adaptation method {method!r}; valid methods: {', '.join(ADAPT_METHODS)}")
    if target is None:
        raise ConfigError(
            f"--adapt {method} needs --adapt-target SPEC: the unlabeled target images, e.g. usps:test[:1000]"
        )
    source_classes, target_classes = classes_of(parse_spec(train)), classes_of(parse_spec(target))
    if target_classes != source_classes:
        raise ConfigError(
            f"the classes of adaptation target {target} ({len(target_classes)}: {target_classes[0]}, ...) "
            f"are not those of {train} ({len(source_classes)}: {source_classes[0]}, ...); "
            "adapt between datasets of the same classes"
        )
    target_spec = parse_spec(target)
    # A user's own images are 28x28 once read (digitflow.data.folder frames them).
    height, width = (MODEL_SIZE, MODEL_SIZE) if target_spec.is_own else DATASETS[target_spec.name].image_size
    if not _frames((height, width), target_preprocess):
        raise ConfigError(
            f"adaptation target {target} has {height}x{width} images, which {target_preprocess} framing cannot "
            f"bring to the model's {MODEL_SIZE}x{MODEL_SIZE}"
        )
    fields = {f.name for f in dataclasses.fields(AdaptConfig)} - {"method", "target"}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ConfigError(f"unknown --adapt-opt {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    config = AdaptConfig(method="dann", target=target, **(options or {}))
    try:
        _check_adapt_values(config)
    except TypeError:
        raise ConfigError(f"--adapt-opt: a value has the wrong type ({options})") from None
    return config


def _check_adapt_values(config: AdaptConfig) -> None:
    if config.domain_hidden < 1 or config.domain_weight < 0 or config.pseudo_label_weight < 0:
        raise ConfigError(
            "--adapt-opt domain_hidden must be at least 1, domain_weight and pseudo_label_weight at least 0"
        )
    if not 0 <= config.teacher_ema < 1:
        raise ConfigError(f"--adapt-opt teacher_ema must be in [0, 1), got {config.teacher_ema}")
    if not 0 <= config.pseudo_label_threshold <= 1:
        raise ConfigError(f"--adapt-opt pseudo_label_threshold must be in [0, 1], got {config.pseudo_label_threshold}")


def source_only_config(config: RunConfig) -> RunConfig:
    """The baseline of an adapted run: the same run without adaptation. A ``--checkpoint FILE`` given
    for the run becomes ``FILE``'s ``.source-only`` sibling for it, so the two never share a file."""
    checkpoint = config.checkpoint
    if checkpoint:
        path = Path(checkpoint)
        checkpoint = str(path.with_name(f"{path.stem}.source-only{path.suffix}"))
    return dataclasses.replace(config, adapt=AdaptConfig(), checkpoint=checkpoint)


def _frames(image_size: tuple[int, int], preprocess: str) -> bool:
    """Whether ``preprocess`` turns images of ``image_size`` into the model's input (a dry run on a blank image)."""
    try:
        framed = frame_images(torch.zeros(1, *image_size, dtype=torch.uint8), preprocess)
    except (ValueError, RuntimeError, IndexError, ConfigError):
        return False
    return tuple(framed.shape) == (1, 1, MODEL_SIZE, MODEL_SIZE)


# --- robustness evaluation and adversarial training (issue 10) ----------------------------------


def export_formats(text: str | list[str] | tuple[str, ...]) -> tuple[ExportFormat, ...]:
    """The exported formats from ``--export-formats`` (``"torchscript,export,aoti"``; a list of names is taken too),
    in the order they are written, TorchScript first and always (it is the registered model); a ConfigError names
    an unknown format."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    valid = choices_of(ExportFormat)
    for name in names:
        if name not in valid:
            raise ConfigError(f"unknown export format {name!r}; valid formats: {', '.join(valid)} (comma-separated)")
    return tuple(f for f in valid if f == "torchscript" or f in names)


def check_epsilon(eps: float, what: str) -> None:
    """A ConfigError unless ``eps`` is an L-infinity radius on the pixel scale, in [0, 1]."""
    if not 0 <= eps <= 1:
        raise ConfigError(f"{what} must be in [0, 1] (pixel scale), got {eps:g}")


def robustness_config(
    attack: list[str] | None,
    epsilons: list[float] | None,
    pgd_steps: int | None,
    num_images: int | None,
    defaults: RobustnessConfig | None = None,
) -> RobustnessConfig:
    """The robustness evaluation's config: ``attack`` None = both attacks, ``[]`` or ``["none"]`` = none;
    None elsewhere = the default of the device (``defaults``: :func:`digitflow.config.robustness_defaults`;
    None: the whole curve). Epsilons in [0, 1], at least one PGD step and one image."""
    defaults = defaults or RobustnessConfig()
    attacks = defaults.attacks if attack is None else tuple(dict.fromkeys(a for a in attack if a != "none"))
    for name in attacks:
        if name not in ATTACKS:
            raise ConfigError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}, none")
    if attack is not None and "none" in attack and attacks:
        raise ConfigError(f"--attack none cannot be combined with {', '.join(attacks)}")
    epsilons = list(defaults.epsilons if epsilons is None else epsilons)
    for eps in epsilons:
        check_epsilon(eps, "an attack epsilon (--epsilons)")
    if attacks and not epsilons:
        raise ConfigError("--epsilons needs at least one epsilon")
    pgd_steps = defaults.pgd_steps if pgd_steps is None else pgd_steps
    if pgd_steps < 1:
        raise ConfigError(f"PGD needs at least 1 step (--pgd-steps), got {pgd_steps}")
    num_images = defaults.num_images if num_images is None else num_images
    if num_images is not None and num_images < 1:
        raise ConfigError(f"--attack-images must be at least 1, got {num_images}")
    return RobustnessConfig(
        attacks=attacks, epsilons=tuple(sorted(set(epsilons))), pgd_steps=pgd_steps, num_images=num_images
    )


def adversarial_training_config(
    mode: str | None,
    eps: float | None,
    steps: int | None,
    ramp_epochs: float | None,
    relative_step: float | None = None,
) -> AdversarialTrainingConfig:
    """Adversarial training's config: ``mode`` None trains on clean images, and then no other
    adversarial option may be given."""
    defaults = AdversarialTrainingConfig()
    if mode in (None, "none"):
        given = [
            o
            for o, v in (
                ("--adv-eps", eps),
                ("--adv-steps", steps),
                ("--adv-ramp-epochs", ramp_epochs),
                ("--adv-relative-step", relative_step),
            )
            if v is not None
        ]
        if given:
            raise ConfigError(f"{' and '.join(given)} need --adv-train fgsm-rs or pgd")
        return defaults
    if mode not in ("fgsm-rs", "pgd"):
        raise ConfigError(f"unknown adversarial training {mode!r}; valid: fgsm-rs, pgd")
    eps = defaults.eps if eps is None else eps
    check_epsilon(eps, "the adversarial training epsilon (--adv-eps)")
    if steps is not None and mode == "fgsm-rs":
        raise ConfigError("--adv-steps is for --adv-train pgd; fgsm-rs takes one step")
    steps = defaults.steps if steps is None else steps
    if steps < 1:
        raise ConfigError(f"PGD needs at least 1 step (--adv-steps), got {steps}")
    ramp_epochs = defaults.ramp_epochs if ramp_epochs is None else ramp_epochs
    if ramp_epochs < 0:
        raise ConfigError(f"--adv-ramp-epochs cannot be negative, got {ramp_epochs:g}")
    if relative_step is not None and relative_step <= 0:
        raise ConfigError(f"--adv-relative-step must be positive, got {relative_step:g}")
    return AdversarialTrainingConfig(
        mode=mode,  # type: ignore[arg-type]
        eps=eps,
        steps=steps,
        ramp_epochs=ramp_epochs,
        relative_step=relative_step,
    )


def checked_model(spec: str, num_classes: int) -> torch.nn.Module:
    """A throwaway model of ``spec`` for ``num_classes`` classes, checked to map a (2, 1, 28, 28) batch to
    (2, num_classes) logits: a user's factory that cannot be imported, does not return a module or
    returns the wrong shape is a one-line ConfigError before any data is read
    (:mod:`digitflow.models.factory`)."""
    check_spec(spec)
    model = create_model(spec, num_classes)
    check_model(model, num_classes, spec)
    return model


def _dry_build(train: TrainConfig, model: torch.nn.Module, cuda_graphs_asked: bool) -> None:
    """Build device, augmentation, optimizer and scheduler once on a throwaway ``model``: their errors
    (unknown names, bad keyword arguments, parameter groups the model lacks, a missing CUDA) surface
    before the run starts. CUDA graphs asked for explicitly must be possible; by default they are used
    wherever they are."""
    device = resolve_device(train.device)
    augment = build_augment(train.augment)
    optimizer = build_optimizer(model, train.optimizer)
    build_scheduler(optimizer, train.scheduler, epochs=train.epochs)
    if cuda_graphs_asked:
        reason = graph_unsupported_reason(device, train.optimizer.name, augment, adversarial=train.adversarial.mode)
        if reason is not None:
            raise ConfigError(f"--cuda-graphs cannot be used here: {reason}")


def default_run_config(config: RunConfig) -> RunConfig:
    """The config a run would get that named only ``config``'s training data, model, device and optimizer:
    what its other settings are compared with (the run's name lists the differences)."""
    return build_config(
        train=config.data.train,
        model=config.train.model,
        optimizer=config.train.optimizer.name,
        device=config.train.device,
        data_dir=config.data.data_dir,
        cache_dir=config.data.cache_dir,
        offline=config.data.offline,
        output_dir=config.output_dir,
    )


def checkpoint_path(config: RunConfig, train_digest: str) -> Path:
    """Where this run checkpoints: ``config.checkpoint`` if set, else a file keyed by the training
    settings and data, so ``--resume`` finds the checkpoint of an interrupted run with the same
    options and nothing else."""
    if config.checkpoint:
        return Path(config.checkpoint)
    settings = resumable_settings(config.train)
    name = model_name(config.train.model)
    if config.adapt.method is not None:  # an adapted run resumes only from its own kind of checkpoint
        settings, name = {**settings, "adapt": to_dict(config.adapt)}, f"{name}-{config.adapt.method}"
    key = hashlib.sha256(json.dumps([settings, train_digest], sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.output_dir) / "checkpoints" / f"{name}-{key}.pt"

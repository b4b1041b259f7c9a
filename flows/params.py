"""Flow parameters -> one typed :class:`RunConfig`. Defaults come from ``digitflow.config`` only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from digitflow.augment import build_augment
from digitflow.config import (
    AugmentConfig,
    DataConfig,
    ExportConfig,
    ExportMode,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    TargetPreprocess,
    TrainConfig,
    train_defaults,
)
from digitflow.cuda_graph import graph_unsupported_reason
from digitflow.data import parse_spec
from digitflow.data.framing import get_preprocessor
from digitflow.device import resolve_device
from digitflow.engine import resumable_settings
from digitflow.errors import ConfigError
from digitflow.models import LeNet
from digitflow.optim import build_optimizer, build_scheduler

DATA_DIR_ENV = "DIGITFLOW_DATA_DIR"
GEOMETRIC_AUGMENTS = ("affine", "elastic")
DEFAULT_AUGMENT = [name for name in GEOMETRIC_AUGMENTS if getattr(AugmentConfig, name)]


def default_data_dir() -> str:
    """``$DIGITFLOW_DATA_DIR``, else ``DataConfig.data_dir`` (``./data``)."""
    return os.environ.get(DATA_DIR_ENV) or DataConfig.data_dir


def build_config(
    *,
    train: str,
    test: str,
    target: list[str],
    target_preprocess: TargetPreprocess,
    epochs: int | None,
    batch_size: int | None,
    optimizer: str,
    optimizer_kwargs: dict[str, Any] | None,
    param_groups: dict[str, dict[str, Any]] | None,
    scheduler: str | None,
    scheduler_kwargs: dict[str, Any] | None,
    augment: list[str] | None,
    seed: int,
    device: str,
    amp: bool | None,
    export_mode: ExportMode,
    data_dir: str | None,
    cache_dir: str,
    offline: bool,
    resume: bool,
    output_dir: str,
    checkpoint: str | None = None,
    label_smoothing: float | None = None,
    cuda_graphs: bool | None = None,
) -> RunConfig:
    """Validate and assemble the run's config; raises a one-line ConfigError/DataError on bad input.

    Everything that can be checked without data is checked here (specs, device, optimizer, scheduler,
    augmentation, sizes), so a typo fails in a second, before any download or training.

    Training settings left as None take the defaults of the device the run trains on
    (:func:`digitflow.config.train_defaults`: a CUDA device trains with a larger batch, CUDA graphs,
    ...); ``optimizer_kwargs`` add to that device's settings of the default optimizer, or to torch's
    own defaults for any other optimizer. The config records the values used.
    """
    for spec in (train, test, *target):
        parse_spec(spec)
    defaults = train_defaults(resolve_device(device).type)
    epochs = defaults.epochs if epochs is None else epochs
    batch_size = defaults.batch_size if batch_size is None else batch_size
    amp = defaults.amp if amp is None else amp
    label_smoothing = defaults.label_smoothing if label_smoothing is None else label_smoothing
    base_kwargs = defaults.optimizer.kwargs if optimizer == defaults.optimizer.name else {}
    optimizer_kwargs = {**base_kwargs, **(optimizer_kwargs or {})}
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch size must be at least 1 (got epochs={epochs}, batch size={batch_size})")
    if export_mode not in ("script", "trace"):
        raise ConfigError(f"unknown export mode {export_mode!r}; valid modes: script, trace")
    get_preprocessor(target_preprocess)
    augment = DEFAULT_AUGMENT if augment is None else augment
    config = RunConfig(
        data=DataConfig(
            train=train, test=test, targets=tuple(target), target_preprocess=target_preprocess,
            data_dir=data_dir or default_data_dir(), cache_dir=cache_dir, offline=offline,
        ),
        train=TrainConfig(
            epochs=epochs, batch_size=batch_size, seed=seed, device=device, amp=amp,
            label_smoothing=label_smoothing,
            cuda_graphs=defaults.cuda_graphs if cuda_graphs is None else cuda_graphs,
            optimizer=OptimizerConfig(name=optimizer, kwargs=optimizer_kwargs, param_groups=dict(param_groups or {})),
            scheduler=SchedulerConfig(name=None if scheduler in (None, "", "none") else scheduler,
                                      kwargs=dict(scheduler_kwargs or {})),
            augment=AugmentConfig(
                affine="affine" in augment,
                elastic="elastic" in augment,
                extra=tuple(a for a in augment if a not in GEOMETRIC_AUGMENTS),
            ),
        ),
        export=ExportConfig(mode=export_mode),
        output_dir=output_dir,
        checkpoint=checkpoint,
        resume=resume,
    )
    _dry_build(config.train, cuda_graphs_asked=cuda_graphs is True)
    return config


def _dry_build(train: TrainConfig, cuda_graphs_asked: bool) -> None:
    """Build device, augmentation, optimizer and scheduler once on a throwaway LeNet: their errors
    (unknown names, bad keyword arguments, a missing CUDA) surface before the run starts. CUDA graphs
    asked for explicitly must be possible; by default they are used wherever they are."""
    device = resolve_device(train.device)
    augment = build_augment(train.augment)
    optimizer = build_optimizer(LeNet(), train.optimizer)
    build_scheduler(optimizer, train.scheduler, epochs=train.epochs)
    if cuda_graphs_asked:
        reason = graph_unsupported_reason(device, train.optimizer.name, augment)
        if reason is not None:
            raise ConfigError(f"--cuda-graphs cannot be used here: {reason}")


def checkpoint_path(config: RunConfig, train_digest: str) -> Path:
    """Where this run checkpoints: ``config.checkpoint`` if set, else a file keyed by the training
    settings and data, so ``--resume`` finds the checkpoint of an interrupted run with the same
    options and nothing else."""
    if config.checkpoint:
        return Path(config.checkpoint)
    settings = resumable_settings(config.train)
    key = hashlib.sha256(json.dumps([settings, train_digest], sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.output_dir) / "checkpoints" / f"lenet-{key}.pt"

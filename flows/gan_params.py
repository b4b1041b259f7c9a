"""GAN flow parameters -> one typed :class:`GanConfig`. Defaults come from ``digitflow.config`` only
(:data:`~digitflow.config.GAN_ARCH_DEFAULTS` per architecture); shared rules (held-out split, data
folder) from :mod:`flows.params`. No Prefect or MLflow here: the CLI checks options with it before
either is imported."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from digitflow.config import (
    DataConfig,
    ExportConfig,
    GanConfig,
    GanEvalConfig,
    GanTrainConfig,
    OptimizerConfig,
    gan_train_defaults,
)
from digitflow.data import parse_spec
from digitflow.device import resolve_device
from digitflow.errors import ConfigError
from digitflow.gan import build_models, optimizer_for, resumable_settings
from digitflow.generative_metrics import FEATURE_LAYERS
from digitflow.models.gan import ARCHITECTURES
from flows.params import default_data_dir, default_test


def build_gan_config(
    *,
    train: str = DataConfig.train,
    test: str | None = None,
    arch: str = GanTrainConfig.arch,
    epochs: int | None = None,
    batch_size: int | None = None,
    latent_dim: int = GanTrainConfig.latent_dim,
    width: int = GanTrainConfig.width,
    optimizer: str | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    param_groups: dict[str, dict[str, Any]] | None = None,
    seed: int = GanTrainConfig.seed,
    device: str = GanTrainConfig.device,
    amp: bool | None = None,
    real_label: float | None = None,
    ema_decay: float | None = None,
    loss: str | None = None,
    spectral_norm: bool | None = None,
    judge: str | None = None,
    judge_epochs: int | None = None,
    fid_images: int = GanEvalConfig.num_images,
    eval_every: int = GanEvalConfig.every,
    feature_layer: str = GanEvalConfig.feature_layer,
    export_mode: str = ExportConfig.mode,
    data_dir: str | None = None,
    cache_dir: str = DataConfig.cache_dir,
    offline: bool = DataConfig.offline,
    resume: bool = False,
    output_dir: str = "outputs",
    checkpoint: str | None = None,
) -> GanConfig:
    """Validate and assemble a GAN run's config; a one-line ConfigError/DataError on bad input.

    None means the architecture's default (:func:`digitflow.config.gan_train_defaults`): epochs, batch
    size, label smoothing, moving average, and the optimizer (``optimizer_kwargs`` add to that
    optimizer's defaults when it is the default one; another optimizer starts from torch's). ``test``
    (held-out real images for FID) follows ``train`` as in the classifier pipeline.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown GAN architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    parse_spec(train)
    test = default_test(train) if test is None else test
    parse_spec(test)
    defaults = gan_train_defaults(arch)
    name = optimizer or defaults.optimizer.name
    base_kwargs = dict(defaults.optimizer.kwargs) if name == defaults.optimizer.name else {}
    if feature_layer not in FEATURE_LAYERS:
        raise ConfigError(f"unknown feature layer {feature_layer!r}; choose one of: {', '.join(FEATURE_LAYERS)}")
    if export_mode not in ("script", "trace"):
        raise ConfigError(f"unknown export mode {export_mode!r}; valid modes: script, trace")
    train_config = dataclasses.replace(
        defaults,
        latent_dim=latent_dim,
        width=width,
        epochs=defaults.epochs if epochs is None else epochs,
        batch_size=defaults.batch_size if batch_size is None else batch_size,
        seed=seed,
        device=device,
        amp=defaults.amp if amp is None else amp,
        real_label=defaults.real_label if real_label is None else real_label,
        ema_decay=defaults.ema_decay if ema_decay is None else ema_decay,
        loss=defaults.loss if loss is None else loss,  # type: ignore[arg-type]  # build_models checks it
        spectral_norm=defaults.spectral_norm if spectral_norm is None else spectral_norm,
        optimizer=OptimizerConfig(
            name=name, kwargs={**base_kwargs, **(optimizer_kwargs or {})}, param_groups=dict(param_groups or {})
        ),
    )
    t = train_config
    if t.epochs < 1 or t.batch_size < 1:
        raise ConfigError(
            f"epochs and batch size must be at least 1 (got epochs={t.epochs}, batch size={t.batch_size})"
        )
    if not 0 < t.real_label <= 1:
        raise ConfigError(f"the real label (one-sided label smoothing) must be in (0, 1], got {t.real_label}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"the moving-average decay must be in [0, 1), got {t.ema_decay}")
    if fid_images < 2 or eval_every < 1:
        raise ConfigError(
            f"--fid-images must be at least 2 and --eval-every at least 1 (got {fid_images}, {eval_every})"
        )
    if judge_epochs is not None and judge_epochs < 1:
        raise ConfigError(f"--judge-epochs must be at least 1, got {judge_epochs}")
    if judge is not None and not judge.strip():
        raise ConfigError("--judge is empty; give an MLflow model URI such as models:/digitflow-lenet@candidate")
    resolve_device(device)
    # the networks and their optimizers once, on the CPU: bad sizes or optimizer options fail now
    generator, discriminator = build_models(t)
    optimizer_for(generator, t.optimizer, [discriminator])
    optimizer_for(discriminator, t.optimizer, [generator])
    return GanConfig(
        data=DataConfig(
            train=train,
            test=test,
            targets=(),
            data_dir=data_dir or default_data_dir(),
            cache_dir=cache_dir,
            offline=offline,
        ),
        train=train_config,
        evaluation=GanEvalConfig(
            judge=judge,
            judge_epochs=judge_epochs,
            num_images=fid_images,
            every=eval_every,
            feature_layer=feature_layer,  # type: ignore[arg-type]  # checked above
        ),
        export=ExportConfig(mode=export_mode, registered_model_name="digitflow-gan-generator"),  # type: ignore[arg-type]
        output_dir=output_dir,
        checkpoint=checkpoint,
        resume=resume,
    )


def gan_checkpoint_path(config: GanConfig, train_digest: str) -> Path:
    """``config.checkpoint`` if set, else a file keyed by the training settings and data, so that
    ``--resume`` finds the checkpoint of an interrupted run with the same options and nothing else."""
    if config.checkpoint:
        return Path(config.checkpoint)
    settings = resumable_settings(config.train)
    key = hashlib.sha256(json.dumps([settings, train_digest], sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.output_dir) / "checkpoints" / f"gan-{config.train.arch}-{key}.pt"

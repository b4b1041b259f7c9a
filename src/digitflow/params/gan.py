"""GAN flow parameters -> one typed :class:`GanConfig`. Defaults come from ``digitflow.config`` only
(:data:`~digitflow.config.GAN_ARCH_DEFAULTS` per architecture); shared rules (held-out split, data
folder) from :mod:`digitflow.params.run`. No Prefect or MLflow here: the CLI checks options with it before
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
    OptimizerConfig,
    gan_train_defaults,
)
from digitflow.config.options import GAN_OPTIONS, complete
from digitflow.data import parse_spec
from digitflow.device import resolve_device
from digitflow.errors import ConfigError
from digitflow.evaluation.generative import FEATURE_LAYERS
from digitflow.models.gan import ARCHITECTURES
from digitflow.params.run import check_classes, default_data_dir, default_test, own_holdout
from digitflow.training.gan import build_models, optimizer_for, resumable_settings

# Options whose None means the architecture's default (GAN_ARCH_DEFAULTS); build_models checks the loss.
_BY_ARCH = ("epochs", "batch_size", "amp", "real_label", "ema_decay", "loss", "spectral_norm")


def build_gan_config(**options: Any) -> GanConfig:
    """Validate and assemble a GAN run's config from the flat options of ``digitflow gan``
    (:data:`digitflow.config.options.GAN_OPTIONS`, by name; those not given take their defaults);
    a one-line ConfigError/DataError on bad input.

    None means the architecture's default (:func:`digitflow.config.gan_train_defaults`): epochs, batch
    size, label smoothing, moving average, and the optimizer (``optimizer_kwargs`` and ``lr`` add to that
    optimizer's defaults when it is the default one; another optimizer starts from torch's). ``test``
    (held-out real images for FID) follows ``train`` as in the classifier pipeline.
    """
    o = complete(GAN_OPTIONS, options, "digitflow gan")
    train, test, arch, optimizer, device = o["train"], o["test"], o["arch"], o["optimizer"], o["device"]
    judge, judge_epochs, fid_images, eval_every = o["judge"], o["judge_epochs"], o["fid_images"], o["eval_every"]
    feature_layer, export_mode = o["feature_layer"], o["export_mode"]
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown GAN architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    parse_spec(train)
    if parse_spec(train).is_own and test is None:  # FID's real images: the seeded hold-out, trained without it
        train, test = (str(side) for side in own_holdout(train))
    test = default_test(train) if test is None else test
    parse_spec(test)
    check_classes(train, [test])
    defaults = gan_train_defaults(arch)
    name = optimizer or defaults.optimizer.name
    base_kwargs = dict(defaults.optimizer.kwargs) if name == defaults.optimizer.name else {}
    if feature_layer not in FEATURE_LAYERS:
        raise ConfigError(f"unknown feature layer {feature_layer!r}; choose one of: {', '.join(FEATURE_LAYERS)}")
    if export_mode not in ("script", "trace"):
        raise ConfigError(f"unknown export mode {export_mode!r}; valid modes: script, trace")
    train_config = dataclasses.replace(
        defaults,
        latent_dim=o["latent_dim"],
        width=o["width"],
        seed=o["seed"],
        device=device,
        **{key: o[key] for key in _BY_ARCH if o[key] is not None},  # the rest: the architecture's defaults
        optimizer=OptimizerConfig(
            name=name,
            kwargs={**base_kwargs, **(o["optimizer_kwargs"] or {}), **({} if o["lr"] is None else {"lr": o["lr"]})},
            param_groups=dict(o["param_groups"] or {}),
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
            data_dir=o["data_dir"] or default_data_dir(),
            cache_dir=o["cache_dir"],
            offline=o["offline"],
        ),
        train=train_config,
        evaluation=GanEvalConfig(
            judge=judge,
            judge_epochs=judge_epochs,
            num_images=fid_images,
            every=eval_every,
            feature_layer=feature_layer,  # checked above
        ),
        export=ExportConfig(mode=export_mode, registered_model_name="digitflow-gan-generator"),
        output_dir=o["output_dir"],
        checkpoint=o["checkpoint"],
        resume=o["resume"],
    )


def gan_checkpoint_path(config: GanConfig, train_digest: str) -> Path:
    """``config.checkpoint`` if set, else a file keyed by the training settings and data, so that
    ``--resume`` finds the checkpoint of an interrupted run with the same options and nothing else."""
    if config.checkpoint:
        return Path(config.checkpoint)
    settings = resumable_settings(config.train)
    key = hashlib.sha256(json.dumps([settings, train_digest], sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.output_dir) / "checkpoints" / f"gan-{config.train.arch}-{key}.pt"

"""Optimizers and learning-rate schedulers by name, from ``torch.optim``."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from digitflow.config import OptimizerConfig, SchedulerConfig
from digitflow.errors import ConfigError

_T = TypeVar("_T")


def _classes(module: ModuleType, base: type[_T]) -> dict[str, type[_T]]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not name.startswith("_")
    }


def optimizer_names() -> list[str]:
    """Every optimizer class ``torch.optim`` offers (SGD, Adam, AdamW, LBFGS, ...)."""
    return sorted(_classes(torch.optim, torch.optim.Optimizer))


def scheduler_names() -> list[str]:
    """Every scheduler class ``torch.optim.lr_scheduler`` offers (StepLR, OneCycleLR, ...)."""
    base = torch.optim.lr_scheduler.LRScheduler
    return sorted(n for n in _classes(torch.optim.lr_scheduler, base) if n != "LRScheduler")


def build_optimizer(
    model: nn.Module,
    config: OptimizerConfig,
    *,
    device: torch.device | None = None,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """Instantiate ``torch.optim.<name>(param_groups, **kwargs)``.

    ``config.param_groups`` maps a parameter-name prefix to overrides: ``{"classifier": {"lr": 1e-3}}``
    puts every parameter whose name starts with ``classifier`` into its own group with that learning
    rate. Parameters matched by no prefix form the first (default) group.

    On a CUDA ``device`` an optimizer that has a fused implementation (SGD, Adam, AdamW, ...) uses it,
    one kernel for all parameters instead of several per parameter, unless ``kwargs`` choose
    ``fused`` or ``foreach`` themselves. ``capturable`` turns on the mode that lets the step be
    captured in a CUDA graph, for optimizers that have one.
    """
    classes = _classes(torch.optim, torch.optim.Optimizer)
    cls = classes.get(config.name)
    if cls is None:
        raise ConfigError(f"unknown optimizer {config.name!r}; choose one of: {', '.join(optimizer_names())}")

    named = list(model.named_parameters())
    groups: list[dict[str, Any]] = []
    claimed: set[str] = set()
    for prefix, options in config.param_groups.items():
        params = [p for n, p in named if n.startswith(prefix) and n not in claimed]
        if not params:
            names = sorted({n.split(".")[0] for n, _ in named})
            raise ConfigError(
                f"parameter group {prefix!r} matches no parameter; top-level names are: {', '.join(names)}"
            )
        claimed.update(n for n, _ in named if n.startswith(prefix))
        groups.append({"params": params, **options})
    rest = [p for n, p in named if n not in claimed]
    if rest:
        groups.insert(0, {"params": rest})
    kwargs = dict(config.kwargs)
    accepted = inspect.signature(cls).parameters
    if (
        device is not None
        and device.type == "cuda"
        and "fused" in accepted
        and not {"fused", "foreach"} & kwargs.keys()
    ):
        kwargs["fused"] = True
    if capturable and "capturable" in accepted:
        kwargs["capturable"] = True
    try:
        return cls(groups, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"optimizer {config.name} rejected its options {config.kwargs}: {exc} (set them with --opt KEY=VALUE)"
        ) from None


HORIZON_ARGUMENTS = ("T_max", "total_iters", "total_steps")  # the run's length, in scheduler steps


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, epochs: int | None = None
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Instantiate ``torch.optim.lr_scheduler.<name>(optimizer, **kwargs)``, or None when no name is set.

    The engine steps it once per epoch (ReduceLROnPlateau gets the epoch's training loss), so a
    horizon argument the class takes (``T_max``, ``total_iters``, ``total_steps``) and the config
    leaves out is set to ``epochs``.
    """
    if not config.name:
        return None
    classes = _classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    cls = classes.get(config.name)
    if cls is None:
        raise ConfigError(f"unknown scheduler {config.name!r}; choose one of: {', '.join(scheduler_names())}")
    kwargs = dict(config.kwargs)
    if epochs is not None:
        accepted = inspect.signature(cls).parameters
        kwargs.update({arg: epochs for arg in HORIZON_ARGUMENTS if arg in accepted and arg not in kwargs})
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"scheduler {config.name} rejected its options {config.kwargs}: {exc} (set them with --sched KEY=VALUE)"
        ) from None

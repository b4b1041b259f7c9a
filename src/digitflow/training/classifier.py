"""Training the classifier: ``train_one_epoch`` returning metrics, and ``fit``, which runs a step
(:mod:`digitflow.training.step`: plain, adversarial or data-parallel) in the shared epoch loop
(:mod:`digitflow.training.loop`: seeding, checkpoints, resume, NaN stop, progress) on the fastest way the
device allows (CUDA graphs, channels-last, cuDNN autotuning).

Data lives in tensors already on the device: ``images`` float (N, 1, 28, 28) in [0, 1] and
``labels`` int64 (N,). A batch is an index into them, so the loop does no per-sample Python or PIL
work; augmentation (if any) runs batched on the device too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from digitflow.config import TrainConfig, to_dict
from digitflow.device import channels_last_helps, cudnn_autotuning, cudnn_autotuning_helps
from digitflow.models import LeNet
from digitflow.models.factory import DEFAULT_MODEL, create_model
from digitflow.training.adversarial import AdversarialTrainStep
from digitflow.training.cuda_graph import CudaGraphStep, graph_unsupported_reason
from digitflow.training.data_parallel import DataParallelStep, rank_and_world
from digitflow.training.loop import BatchCallback, EpochCallback, resume_from, run_epoch, run_epochs
from digitflow.training.optim import build_optimizer, build_scheduler
from digitflow.training.step import Augment, TrainStep


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    amp: bool = False,
    label_smoothing: float = 0.0,
    epoch: int = 1,
    on_batch: BatchCallback | None = None,
    step: TrainStep | CudaGraphStep | None = None,
) -> dict[str, float]:
    """One pass over shuffled batches. Returns ``{"loss", "accuracy", "seconds", "images_per_sec"}``.

    ``step`` runs one batch (a :class:`TrainStep`, or a CUDA-graph replay of one:
    :mod:`digitflow.training.cuda_graph`); without it an eager :class:`TrainStep` is built from ``model``,
    ``optimizer``, ``augment``, ``amp`` and ``label_smoothing``. The loop is
    :func:`digitflow.training.loop.run_epoch` (NaN stop every ``CHECK_EVERY`` batches).
    """
    if step is None:
        step = TrainStep(model, optimizer, images, labels, augment=augment, amp=amp, label_smoothing=label_smoothing)
    return run_epoch(
        step if isinstance(step, TrainStep) else step.step,
        images.shape[0],
        batch_size=batch_size,
        generator=generator,
        epoch=epoch,
        on_batch=on_batch,
        run_batch=step,
    )


@dataclass
class FitResult:
    """What :func:`fit` hands back: the trained model and its per-epoch history."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, epoch key 1-based
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0
    step: str = "eager"  # or "cuda-graph"; with the reason when CUDA graphs were asked for but not used


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    augment: Augment | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    data_parallel: bool = False,
) -> FitResult:
    """Train ``model`` (already on the device of ``images``) for ``config.epochs`` epochs.

    ``data_parallel``: one rank of data-parallel training in the process group already initialised
    (``torch.distributed``; :mod:`digitflow.training.data_parallel`): the step wraps the model in
    DistributedDataParallel and the loop trains this rank on its shard of every batch; only rank 0
    writes the checkpoint. Every rank holds all of ``images``.

    After every epoch a checkpoint (model, optimizer, scheduler, config, epoch, history) is written to
    ``checkpoint_path``. With ``resume=True`` and a checkpoint there, training continues after the last
    completed epoch and ends with the same weights an uninterrupted run would have.

    How a step runs is decided per device: ``config.cuda_graphs`` replays it as a CUDA graph where
    that is possible (:mod:`digitflow.training.cuda_graph`; ``FitResult.step`` says what ran and, if graphs
    were asked for but not possible, why); channels-last memory and cuDNN autotuning where measured
    to pay (:mod:`digitflow.device`).
    """
    device = images.device
    graph_blocker = (
        graph_unsupported_reason(device, config.optimizer.name, augment, adversarial=config.adversarial.mode)
        if config.cuda_graphs
        else None
    )
    if data_parallel and config.cuda_graphs:
        graph_blocker = "not with data-parallel training"
    use_graphs = config.cuda_graphs and graph_blocker is None
    optimizer = build_optimizer(model, config.optimizer, device=device, capturable=use_graphs)
    if not isinstance(optimizer, torch.optim.LBFGS) and channels_last_helps(device, config.batch_size, use_graphs):
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their NHWC conv and pooling kernels
        # (batch norms that are slow in it on the CPU are handled by TrainStep: memory_layout.py). Strides
        # change, values do not; the parameters stay the same objects, so the optimizer keeps
        # tracking them. LBFGS flattens gradients with .view(-1), which channels-last forbids.
        model.to(memory_format=torch.channels_last)
    scheduler = build_scheduler(optimizer, config.scheduler, epochs=config.epochs)
    step_options: dict[str, Any] = dict(
        augment=augment, amp=config.amp, label_smoothing=config.label_smoothing, scheduler=scheduler
    )
    shard = None
    step_type: type[TrainStep] = TrainStep
    if data_parallel:  # the forward pass through DistributedDataParallel, this rank's shard of each batch
        shard, step_type = rank_and_world(), DataParallelStep
    step: TrainStep
    if config.adversarial.mode is None:
        step = step_type(model, optimizer, images, labels, **step_options)
    else:  # the same loop, on adversarial batches (digitflow.training.adversarial)
        step = AdversarialTrainStep(model, optimizer, images, labels, adversarial=config.adversarial, **step_options)
    settings = resumable_settings(config)
    history = resume_from(step, checkpoint_path, settings) if resume else []
    # cuDNN autotuning where measured to pay (large batches on CUDA); restored on the way out.
    with cudnn_autotuning(cudnn_autotuning_helps(device, config.batch_size)):
        replay = None
        if use_graphs and len(history) < config.epochs:  # captured after resuming: graphs keep tensor addresses
            model.train()
            replay = CudaGraphStep(step, config.batch_size)
        result = run_epochs(
            step,
            images.shape[0],
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            settings=settings,
            checkpoint_path=checkpoint_path,
            history=history,
            on_batch=on_batch,
            on_epoch=on_epoch,
            run_batch=replay,
            shard=shard,
        )

    model.to(memory_format=torch.contiguous_format)  # hand back standard strides (exporters expect them)
    return FitResult(
        model=model,
        history=result.history,
        checkpoint=result.checkpoint,
        resumed_from_epoch=result.resumed_from_epoch,
        step="cuda-graph" if use_graphs else ("eager" if graph_blocker is None else f"eager ({graph_blocker})"),
    )


def resumable_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: all but the device.

    The epoch count is included: schedules such as the default cosine annealing are laid out over it,
    so "resume with more epochs" would not be the run that was interrupted.
    """
    settings = to_dict(config)
    settings.pop("device")
    return settings


@overload
def build_model(num_classes: int, seed: int) -> LeNet: ...
@overload
def build_model(num_classes: int, seed: int, model: str) -> nn.Module: ...
def build_model(num_classes: int, seed: int, model: str = DEFAULT_MODEL) -> nn.Module:
    """A freshly initialised ``model`` (a built-in name such as ``lenet``, or ``package.module:Factory``:
    :mod:`digitflow.models.factory`); the same seed gives the same initial weights."""
    return create_model(model, num_classes, seed=seed)

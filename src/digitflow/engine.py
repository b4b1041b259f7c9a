"""Training engine: ``train_one_epoch`` / ``evaluate`` return metrics; ``fit`` adds epochs,
schedules, checkpoints and resume.

Data lives in tensors already on the device: ``images`` float (N, 1, 28, 28) in [0, 1] and
``labels`` int64 (N,). A batch is an index into them, so the loop does no per-sample Python or PIL
work; augmentation (if any) runs batched on the device too.

Reproducibility: every epoch reseeds the global RNG from ``(seed, epoch)`` and draws its batch order
from a generator seeded the same way. An epoch's randomness therefore does not depend on what ran
before it, which is what lets ``--resume`` continue an interrupted run to the same result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from digitflow.config import TrainConfig, to_dict
from digitflow.device import bf16_autocast_helps
from digitflow.errors import CheckpointError, TrainingDivergedError
from digitflow.layout import contiguous_batch_norm
from digitflow.optim import build_optimizer, build_scheduler

Augment = Callable[[torch.Tensor], torch.Tensor]
# on_batch(epoch, batch_index, num_batches, loss_or_None): loss is only a float on check intervals,
# so reporting progress never forces a GPU sync on every batch.
BatchCallback = Callable[[int, int, int, float | None], None]
EpochCallback = Callable[[dict[str, Any]], None]

CHECK_EVERY = 20  # batches between finiteness checks of the running loss (one device sync each)


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed for one epoch: distinct per epoch, independent of earlier epochs."""
    return seed * 100_003 + epoch


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
    epoch: int = 1,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    """One pass over shuffled batches. Returns ``{"loss", "accuracy", "seconds", "images_per_sec"}``.

    Works with every ``torch.optim`` optimizer, LBFGS included, because each step goes through a
    closure (which plain optimizers call once and LBFGS calls as often as it needs). ``amp`` runs
    the forward pass under bfloat16 autocast where that is faster (:func:`bf16_autocast_helps`:
    CUDA, CPUs with native bfloat16); the weights, the loss and the optimizer stay float32. On the
    CPU, batch norms whose channels-last bfloat16 kernel is slow run on contiguous memory
    (:func:`~digitflow.layout.contiguous_batch_norm`). Raises TrainingDivergedError as soon as the
    running loss is NaN or infinite.
    """
    model.train()
    device = images.device
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    num_batches = (n + batch_size - 1) // batch_size
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    # bf16 autocast where it pays (CUDA, CPUs with native bf16); elsewhere no context at all, because
    # a disabled autocast still costs per step.
    use_amp = amp and bf16_autocast_helps(device)
    start = time.perf_counter()

    for b in range(num_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x, y = images[idx], labels[idx]  # (B, 1, 28, 28), (B,)
        if augment is not None:
            x = augment(x)
        outputs: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                # Batch norms whose channels-last bf16 CPU kernel is slow run on contiguous memory.
                with contiguous_batch_norm(model):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            if not outputs:  # keep the first evaluation: the logits before this step's update
                outputs.append(logits.detach())
            return loss

        loss = optimizer.step(closure).detach()
        loss_sum += loss * y.shape[0]
        correct += (outputs[0].argmax(1) == y).sum()

        last = b == num_batches - 1
        reported = None
        if last or (b + 1) % CHECK_EVERY == 0:
            reported = float(loss)
            if not torch.isfinite(loss_sum):
                raise TrainingDivergedError(
                    f"training loss became {reported} in epoch {epoch}, batch {b + 1}/{num_batches}; "
                    "lower the learning rate or pick another optimizer"
                )
        if on_batch is not None:
            on_batch(epoch, b + 1, num_batches, reported)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "loss": float(loss_sum) / n,
        "accuracy": float(correct) / n,
        "seconds": seconds,
        "images_per_sec": n / seconds,
    }


@dataclass
class EvalResult:
    """What :func:`evaluate` measures on one labelled set."""

    loss: float
    accuracy: float
    per_class_accuracy: list[float]
    confusion: torch.Tensor  # (C, C) int64, rows = true class, columns = predicted class
    predictions: torch.Tensor  # (N,) int64, on the CPU
    num_images: int

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric dict: ``{prefix}/loss``, ``{prefix}/accuracy``, ``{prefix}/class_<k>_accuracy``."""
        out = {f"{prefix}/loss": self.loss, f"{prefix}/accuracy": self.accuracy}
        out.update({f"{prefix}/class_{k}_accuracy": a for k, a in enumerate(self.per_class_accuracy)})
        return out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int = 10,
    batch_size: int = 1000,
) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on ``images``/``labels``."""
    model.eval()
    n = images.shape[0]
    loss_sum = 0.0
    preds = []
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds).cpu()
    truth = labels.cpu()
    confusion = torch.bincount(truth * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return EvalResult(
        loss=loss_sum / n,
        accuracy=float((predictions == truth).float().mean()),
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion,
        predictions=predictions,
        num_images=n,
    )


@dataclass
class FitResult:
    """What :func:`fit` hands back: the trained model and its per-epoch history."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, epoch key 1-based
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0


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
) -> FitResult:
    """Train ``model`` (already on the device of ``images``) for ``config.epochs`` epochs.

    After every epoch a checkpoint (model, optimizer, scheduler, config, epoch, history) is written to
    ``checkpoint_path``. With ``resume=True`` and a checkpoint there, training continues after the last
    completed epoch and ends with the same weights an uninterrupted run would have.
    """
    optimizer = build_optimizer(model, config.optimizer)
    if not isinstance(optimizer, torch.optim.LBFGS):  # LBFGS flattens gradients with .view(-1)
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their faster NHWC conv and pooling
        # kernels (batch norms that are slow in it are handled in train_one_epoch: layout.py).
        # Strides change, values do not; the parameters stay the same objects, so the optimizer
        # keeps tracking them.
        model.to(memory_format=torch.channels_last)
    scheduler = build_scheduler(optimizer, config.scheduler, epochs=config.epochs)
    history: list[dict[str, float]] = []
    start_epoch = 1
    model_name = type(model).__name__

    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model_name=model_name)
        if state["config"] != resumable_settings(config):
            raise CheckpointError(
                f"{checkpoint_path} was written with other training settings; "
                "resume with the same options or start without --resume"
            )
        load_model_state(model, state, checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1

    resumed_from = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(epoch_seed(config.seed, epoch))  # augmentation draws (CPU and CUDA)
        generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))  # batch order
        metrics = train_one_epoch(
            model, optimizer, images, labels,
            batch_size=config.batch_size, generator=generator, augment=augment,
            amp=config.amp, epoch=epoch, on_batch=on_batch,
        )
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics["loss"])
            else:
                scheduler.step()
        record = {"epoch": epoch, **metrics}
        history.append(record)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "model_name": model_name,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "config": resumable_settings(config),
                "epoch": epoch,
                "history": history,
            })
        if on_epoch is not None:
            on_epoch(record)

    model.to(memory_format=torch.contiguous_format)  # hand back standard strides (exporters expect them)
    return FitResult(
        model=model,
        history=history,
        checkpoint=Path(checkpoint_path) if checkpoint_path is not None else None,
        resumed_from_epoch=resumed_from,
    )


def resumable_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: all but the device.

    The epoch count is included: schedules such as the default cosine annealing are laid out over it,
    so "resume with more epochs" would not be the run that was interrupted.
    """
    settings = to_dict(config)
    settings.pop("device")
    return settings


def build_model(num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised LeNet; the same seed gives the same initial weights."""
    from digitflow.models import LeNet

    torch.manual_seed(seed)
    return LeNet(num_classes=num_classes)

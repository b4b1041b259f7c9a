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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from digitflow.config import TrainConfig, to_dict
from digitflow.cuda_graph import CudaGraphStep, graph_unsupported_reason
from digitflow.device import bf16_autocast_helps, channels_last_helps, cudnn_autotuning, cudnn_autotuning_helps
from digitflow.errors import CheckpointError, TrainingDivergedError
from digitflow.layout import contiguous_batch_norm
from digitflow.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from digitflow.models import LeNet

Augment = Callable[[torch.Tensor], torch.Tensor]
# on_batch(epoch, batch_index, num_batches, loss_or_None): loss is only a float on check intervals,
# so reporting progress never forces a GPU sync on every batch.
BatchCallback = Callable[[int, int, int, float | None], None]
EpochCallback = Callable[[dict[str, Any]], None]

CHECK_EVERY = 20  # batches between finiteness checks of the running loss (one device sync each)


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed for one epoch: distinct per epoch, independent of earlier epochs."""
    return seed * 100_003 + epoch


class TrainStep:
    """One optimizer step on the batch ``images[idx]``: augment, forward, loss, backward, update.

    The batch's summed loss and number of correct predictions are added to ``loss_sum`` and
    ``correct``, tensors on the device, so the loop never waits for the GPU to read a number.
    Every ``torch.optim`` optimizer works, LBFGS included, because the step goes through a closure
    (which plain optimizers call once and LBFGS as often as it needs). ``amp`` runs the forward pass
    under bfloat16 autocast where that is faster (:func:`bf16_autocast_helps`: CUDA, CPUs with
    native bfloat16); the weights, the loss and the optimizer stay float32.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        augment: Augment | None = None,
        amp: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.images, self.labels = images, labels  # (N, 1, 28, 28) float, (N,) int64, on the device
        self.augment = augment
        self.label_smoothing = label_smoothing
        device = images.device
        # bf16 autocast where it pays; elsewhere no context at all (a disabled one still costs per step).
        self.use_amp = amp and bf16_autocast_helps(device)
        # CPU only: batch norms whose channels-last bf16 kernel is slow run on contiguous memory
        # (layout.py). On CUDA the context is not entered at all: no Python call per layer.
        self.fix_batch_norm_layout = device.type == "cpu" and self.use_amp
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def reset(self) -> None:
        """Zero the running sums (start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        x, y = self.images[idx], self.labels[idx]  # (B, 1, 28, 28), (B,)
        if self.augment is not None:
            x = self.augment(x)
        first_logits: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            # cache_enabled=False: autocast's cache of cast weights must not outlive a CUDA-graph
            # capture, and LeNet uses each weight once per forward, so the cache saves nothing.
            with (
                torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False)
                if self.use_amp
                else contextlib.nullcontext()
            ):
                with contiguous_batch_norm(self.model) if self.fix_batch_norm_layout else contextlib.nullcontext():
                    logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            loss.backward()
            if not first_logits:  # keep the first evaluation: the logits before this step's update
                first_logits.append(logits.detach())
            return loss

        # torch's stub types the closure and step's result as float; both are the loss tensor here (LBFGS
        # returns its first evaluation of the closure, the others their only one).
        loss: torch.Tensor = self.optimizer.step(closure)  # type: ignore[arg-type, assignment]
        self.loss_sum += loss.detach() * y.shape[0]
        self.correct += (first_logits[0].argmax(1) == y).sum()


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
    :mod:`digitflow.cuda_graph`); without it an eager :class:`TrainStep` is built from ``model``,
    ``optimizer``, ``augment``, ``amp`` and ``label_smoothing``. The host reads the running loss only
    every ``CHECK_EVERY`` batches and at the end, and raises TrainingDivergedError as soon as it is
    NaN or infinite.
    """
    model.train()
    if step is None:
        step = TrainStep(model, optimizer, images, labels, augment=augment, amp=amp, label_smoothing=label_smoothing)
    device = images.device
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    num_batches = (n + batch_size - 1) // batch_size
    step.reset()
    start = time.perf_counter()

    for b in range(num_batches):
        step(order[b * batch_size : (b + 1) * batch_size])
        last = b == num_batches - 1
        reported = None
        if last or (b + 1) % CHECK_EVERY == 0:
            loss_sum = float(step.loss_sum)  # the one host sync of a check interval
            reported = loss_sum / min(n, (b + 1) * batch_size)
            if not math.isfinite(loss_sum):
                raise TrainingDivergedError(
                    f"training loss became {reported} in epoch {epoch}, batch {b + 1}/{num_batches}; "
                    "lower the learning rate or pick another optimizer"
                )
        if on_batch is not None:
            on_batch(epoch, b + 1, num_batches, reported)

    seconds = time.perf_counter() - start  # the last check above synchronised with the device
    return {
        "loss": float(step.loss_sum) / n,
        "accuracy": float(step.correct) / n,
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
    batch_size: int | None = None,
) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on ``images``/``labels``.

    ``batch_size`` defaults to :func:`eval_batch_size` for the images' device. The loss is summed on
    the device, so the host waits for it once, not once per batch.
    """
    model.eval()
    n = images.shape[0]
    batch_size = batch_size or eval_batch_size(images.device)
    loss_sum = torch.zeros((), device=images.device)
    preds = []
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds).cpu()
    truth = labels.cpu()
    confusion = torch.bincount(truth * num_classes + predictions, minlength=num_classes**2).view(
        num_classes, num_classes
    )
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return EvalResult(
        loss=float(loss_sum) / n,
        accuracy=float((predictions == truth).float().mean()),
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion,
        predictions=predictions,
        num_images=n,
    )


def eval_batch_size(device: torch.device) -> int:
    """Evaluation batch: 1,000 images on the CPU (cache-sized); 16,384 on a GPU, where a LeNet batch of
    that size is still far from filling the card and fewer, larger launches are what makes it fast."""
    return 16_384 if device.type == "cuda" else 1000


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
) -> FitResult:
    """Train ``model`` (already on the device of ``images``) for ``config.epochs`` epochs.

    After every epoch a checkpoint (model, optimizer, scheduler, config, epoch, history) is written to
    ``checkpoint_path``. With ``resume=True`` and a checkpoint there, training continues after the last
    completed epoch and ends with the same weights an uninterrupted run would have.

    How a step runs is decided per device: ``config.cuda_graphs`` replays it as a CUDA graph where
    that is possible (:mod:`digitflow.cuda_graph`; ``FitResult.step`` says what ran and, if graphs
    were asked for but not possible, why); channels-last memory and cuDNN autotuning where measured
    to pay (:mod:`digitflow.device`).
    """
    device = images.device
    graph_blocker = graph_unsupported_reason(device, config.optimizer.name, augment) if config.cuda_graphs else None
    use_graphs = config.cuda_graphs and graph_blocker is None
    optimizer = build_optimizer(model, config.optimizer, device=device, capturable=use_graphs)
    if not isinstance(optimizer, torch.optim.LBFGS) and channels_last_helps(device, config.batch_size, use_graphs):
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their NHWC conv and pooling kernels
        # (batch norms that are slow in it on the CPU are handled by TrainStep: layout.py). Strides
        # change, values do not; the parameters stay the same objects, so the optimizer keeps
        # tracking them. LBFGS flattens gradients with .view(-1), which channels-last forbids.
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
    # cuDNN autotuning where measured to pay (large batches on CUDA); restored on the way out.
    with cudnn_autotuning(cudnn_autotuning_helps(device, config.batch_size)):
        eager = TrainStep(
            model, optimizer, images, labels, augment=augment, amp=config.amp, label_smoothing=config.label_smoothing
        )
        step: TrainStep | CudaGraphStep = eager
        if use_graphs and start_epoch <= config.epochs:
            model.train()
            step = CudaGraphStep(eager, config.batch_size)
        for epoch in range(start_epoch, config.epochs + 1):
            torch.manual_seed(epoch_seed(config.seed, epoch))  # augmentation draws (CPU and CUDA)
            generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))  # batch order
            metrics = train_one_epoch(
                model,
                optimizer,
                images,
                labels,
                batch_size=config.batch_size,
                generator=generator,
                epoch=epoch,
                on_batch=on_batch,
                step=step,
            )
            metrics["lr"] = float(optimizer.param_groups[0]["lr"])
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(metrics["loss"])
                else:
                    scheduler.step()
            record = {"epoch": epoch, **metrics}
            history.append(record)
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "model_name": model_name,
                        "model": model.state_dict(),
                        "optimizer": _float_lr(optimizer.state_dict()),
                        "scheduler": _float_lr(scheduler.state_dict()) if scheduler is not None else None,
                        "config": resumable_settings(config),
                        "epoch": epoch,
                        "history": history,
                    },
                )
            if on_epoch is not None:
                on_epoch(record)

    model.to(memory_format=torch.contiguous_format)  # hand back standard strides (exporters expect them)
    return FitResult(
        model=model,
        history=history,
        checkpoint=Path(checkpoint_path) if checkpoint_path is not None else None,
        resumed_from_epoch=resumed_from,
        step="cuda-graph" if use_graphs else ("eager" if graph_blocker is None else f"eager ({graph_blocker})"),
    )


def _float_lr(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer or scheduler state dict with plain-float learning rates (CUDA graphs keep them as
    device tensors), so a checkpoint resumes on any device, with or without graphs."""

    def plain(value: Any) -> Any:
        return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value

    for group in state.get("param_groups", ()):
        group["lr"] = plain(group.get("lr"))
    if "_last_lr" in state:
        state["_last_lr"] = [plain(v) for v in state["_last_lr"]]
    return state


def resumable_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: all but the device.

    The epoch count is included: schedules such as the default cosine annealing are laid out over it,
    so "resume with more epochs" would not be the run that was interrupted.
    """
    settings = to_dict(config)
    settings.pop("device")
    return settings


def build_model(num_classes: int, seed: int) -> LeNet:
    """A freshly initialised LeNet; the same seed gives the same initial weights."""
    from digitflow.models import LeNet

    torch.manual_seed(seed)
    return LeNet(num_classes=num_classes)

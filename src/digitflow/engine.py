"""Classifier engine: :class:`TrainStep` (one optimizer step on a batch), ``train_one_epoch`` /
``evaluate`` returning metrics, and ``fit``, which runs the step in the shared epoch loop
(:mod:`digitflow.loop`: seeding, checkpoints, resume, NaN stop, progress) on the fastest way the
device allows (CUDA graphs, channels-last, cuDNN autotuning).

Data lives in tensors already on the device: ``images`` float (N, 1, 28, 28) in [0, 1] and
``labels`` int64 (N,). A batch is an index into them, so the loop does no per-sample Python or PIL
work; augmentation (if any) runs batched on the device too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.checkpoint import load_model_state
from digitflow.config import TrainConfig, to_dict
from digitflow.cuda_graph import CudaGraphStep, graph_unsupported_reason
from digitflow.device import bf16_autocast_helps, channels_last_helps, cudnn_autotuning, cudnn_autotuning_helps
from digitflow.layout import contiguous_batch_norm
from digitflow.loop import BatchCallback, EpochCallback, resume_from, run_epoch, run_epochs
from digitflow.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from digitflow.models import LeNet

Augment = Callable[[torch.Tensor], torch.Tensor]


class TrainStep:
    """One optimizer step on the batch ``images[idx]``: augment, forward, loss, backward, update
    (a :class:`digitflow.loop.Step`).

    The batch's summed loss and number of correct predictions are added to ``loss_sum`` and
    ``correct``, tensors on the device, so the loop never waits for the GPU to read a number.
    Every ``torch.optim`` optimizer works, LBFGS included, because the step goes through a closure
    (which plain optimizers call once and LBFGS as often as it needs). ``amp`` runs the forward pass
    under bfloat16 autocast where that is faster (:func:`bf16_autocast_helps`: CUDA, CPUs with
    native bfloat16); the weights, the loss and the optimizer stay float32. ``scheduler`` (optional)
    is stepped after every epoch.

    Subclasses change what a batch trains on by overriding :meth:`inputs` (adversarial training
    perturbs the images there) and add figures through :meth:`epoch_metrics`.
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
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.name = type(model).__name__
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.network: nn.Module = model  # what the forward pass calls: the model, or a wrapper such as DDP's
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

    def train(self) -> None:
        self.model.train()

    def reset(self) -> None:
        """Zero the running sums (start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on: images ``(B, 1, 28, 28)`` (augmented) and labels ``(B,)``."""
        x, y = self.images[idx], self.labels[idx]
        if self.augment is not None:
            x = self.augment(x)
        return x, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits on ``x`` as the step computes them: under bfloat16 autocast where that
        pays, with the CPU batch-norm layout fix (an attack in :meth:`inputs` uses it too)."""
        # cache_enabled=False: autocast's cache of cast weights must not outlive a CUDA-graph
        # capture, and LeNet uses each weight once per forward, so the cache saves nothing.
        with (
            torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False)
            if self.use_amp
            else contextlib.nullcontext(),
            contiguous_batch_norm(self.model) if self.fix_batch_norm_layout else contextlib.nullcontext(),
        ):
            logits: torch.Tensor = self.network(x)
        return logits

    def __call__(self, idx: torch.Tensor) -> None:
        x, y = self.inputs(idx)
        first_logits: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.forward(x)
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

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        """``loss`` (mean per image) and ``accuracy`` of the epoch, from the logits before each update."""
        return {"loss": float(self.loss_sum) / num_examples, "accuracy": float(self.correct) / num_examples}

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """Record the epoch's learning rate, then step the scheduler (ReduceLROnPlateau on the epoch's loss)."""
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics["loss"])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": _float_lr(self.optimizer.state_dict()),
            "scheduler": _float_lr(self.scheduler.state_dict()) if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


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
    ``optimizer``, ``augment``, ``amp`` and ``label_smoothing``. The loop is
    :func:`digitflow.loop.run_epoch` (NaN stop every ``CHECK_EVERY`` batches).
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
    data_parallel: bool = False,
) -> FitResult:
    """Train ``model`` (already on the device of ``images``) for ``config.epochs`` epochs.

    ``data_parallel``: one rank of data-parallel training in the process group already initialised
    (``torch.distributed``; :mod:`digitflow.distributed`): the step wraps the model in
    DistributedDataParallel and the loop trains this rank on its shard of every batch; only rank 0
    writes the checkpoint. Every rank holds all of ``images``.

    After every epoch a checkpoint (model, optimizer, scheduler, config, epoch, history) is written to
    ``checkpoint_path``. With ``resume=True`` and a checkpoint there, training continues after the last
    completed epoch and ends with the same weights an uninterrupted run would have.

    How a step runs is decided per device: ``config.cuda_graphs`` replays it as a CUDA graph where
    that is possible (:mod:`digitflow.cuda_graph`; ``FitResult.step`` says what ran and, if graphs
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
        # (batch norms that are slow in it on the CPU are handled by TrainStep: layout.py). Strides
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
        from digitflow.distributed import DataParallelStep, rank_and_world

        shard, step_type = rank_and_world(), DataParallelStep
    step: TrainStep
    if config.adversarial.mode is None:
        step = step_type(model, optimizer, images, labels, **step_options)
    else:  # the same loop, on adversarial batches (digitflow.adversarial)
        from digitflow.adversarial import AdversarialTrainStep

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

"""The step protocol every training step follows (:class:`Step`), and the classifier's own step
(:class:`TrainStep`), which adversarial and data-parallel training extend.

The epoch loop (:mod:`digitflow.training.loop`) runs any :class:`Step`; :mod:`digitflow.training.classifier`
picks which step ``fit`` runs. Imports go one way: step <- adversarial, data_parallel, cuda_graph <- classifier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.device import bf16_autocast_helps
from digitflow.training.checkpoint import load_model_state
from digitflow.training.memory_layout import contiguous_batch_norm


class Step(Protocol):
    """One training step on a batch of example indices, and what the loop needs around it.

    A step owns its models, optimizers and schedulers and keeps running sums on the device, so the
    loop reads a number from it only every ``CHECK_EVERY`` batches and at the end of an epoch.
    """

    name: str  # what a checkpoint is written for ("LeNet", "GAN-dcgan"); resume refuses any other
    loss_sum: torch.Tensor  # running sum over this epoch's examples of the loss to watch (0-dim, on the device)

    def train(self) -> None:
        """Put the step's modules in training mode (start of an epoch)."""

    def reset(self) -> None:
        """Zero the running sums (start of an epoch)."""

    def __call__(self, idx: torch.Tensor) -> None:
        """Train on the examples ``idx`` (int64 indices into the step's data, on its device)."""

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        """The epoch's figures from the running sums (``loss`` first; e.g. ``accuracy``, ``d_loss``)."""
        ...

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch: step schedulers, add figures such as ``lr`` to ``metrics``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume from: ``model`` (required) and optimizer/scheduler states, as plain
        tensors, numbers, strings, lists and dicts (what ``torch.load(weights_only=True)`` reads)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; raise CheckpointError (one line) if it does not fit."""


Augment = Callable[[torch.Tensor], torch.Tensor]  # a batch (B, 1, 28, 28) -> the same shape, augmented


class TrainStep:
    """One optimizer step on the batch ``images[idx]``: augment, forward, loss, backward, update
    (a :class:`Step`).

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
        # (memory_layout.py). On CUDA the context is not entered at all: no Python call per layer.
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
            "optimizer": float_lr(self.optimizer.state_dict()),
            "scheduler": float_lr(self.scheduler.state_dict()) if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def float_lr(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer or scheduler state dict with plain-float learning rates (CUDA graphs keep them as
    device tensors), so a checkpoint resumes on any device, with or without graphs."""

    def plain(value: Any) -> Any:
        return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value

    for group in state.get("param_groups", ()):
        group["lr"] = plain(group.get("lr"))
    if "_last_lr" in state:
        state["_last_lr"] = [plain(v) for v in state["_last_lr"]]
    return state

"""Domain-adversarial adaptation (DANN, Ganin and Lempitsky 2015) as a step of the shared epoch loop.

A domain classifier sits on the model's features (``model.features``: LeNet's 800 values per image)
behind a gradient reversal layer: the head learns to tell source from target images, and the reversed,
scaled gradient teaches the feature extractor to make them indistinguishable, while the label
classifier learns the task on labeled source images. Target images come without labels; nothing
here takes target labels at all.

What :class:`DannStep` does for one batch of source indices (the loop's batch order):

- draws as many target images, uniformly with the global RNG (which :func:`digitflow.training.loop.run_epochs`
  seeds per epoch), so every batch holds both domains;
- label loss (cross-entropy) on the source images; domain loss (binary cross-entropy, source 0,
  target 1) on both, behind :func:`grad_reverse` with ``lambda(p) = w * (2 / (1 + exp(-gamma p)) - 1)``,
  ``p`` the fraction of all training steps done (:func:`ramp`);
- optionally self-training on the target: a target image whose un-augmented prediction is at least
  ``pseudo_label_threshold`` confident becomes a label for its augmented view (weight ramped like
  lambda, so it starts only once the features have begun to align);
- optionally domain-specific batch-norm statistics: source and target batches go through the
  network separately, so each is normalised with its own domain's statistics, and after training
  :func:`recompute_batch_norm` gives the model one set of statistics per domain (AdaBN, Li et al.
  2016): :func:`fit_dann` hands back the model with source statistics and a copy with target ones.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.config import AdaptConfig, TrainConfig, to_dict
from digitflow.device import bf16_autocast_helps, channels_last_helps
from digitflow.fileio import one_line
from digitflow.training.checkpoint import load_model_state
from digitflow.training.classifier import resumable_settings
from digitflow.training.loop import BatchCallback, EpochCallback, resume_from, run_epochs
from digitflow.training.memory_layout import contiguous_batch_norm
from digitflow.training.optim import build_optimizer, build_scheduler
from digitflow.training.step import Augment, float_lr


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; the gradient that flows back through it is multiplied by ``-scale``."""
    out: torch.Tensor = GradientReversal.apply(x, scale)
    return out


def ramp(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule: ``2 / (1 + exp(-gamma * p)) - 1``, from 0 at ``p = 0`` to nearly 1 at ``p = 1``."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainClassifier(nn.Module):
    """Source-or-target logit from features: (N, *feature_shape) -> (N,)."""

    def __init__(self, in_features: int = 800, hidden: int = 500) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.net(features).squeeze(1)
        return logit


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's features of images in [0, 1]: its own normalization where it keeps ``mean`` and
    ``std`` buffers (as every built-in model does), then ``model.features``."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        x = (x.to(mean.dtype) - mean) / std
    out: torch.Tensor = model.features(x)  # type: ignore[operator]
    return out


# What --adapt dann needs from a model, for the one-line error of a model without it (docs/models.md).
DANN_CONTRACT = (
    "a feature extractor: submodules features and classifier with model(x) == classifier(features(x)), "
    "x normalised by the model's mean and std buffers if it has them"
)


@torch.no_grad()
def dann_unsupported_reason(model: nn.Module) -> str | None:
    """Why DANN cannot adapt ``model``, or None if it can: it needs ``model.features`` and
    ``model.classifier`` (modules) such that ``model(x)`` is ``classifier(features_of(model, x))``,
    checked on a (2, 1, 28, 28) batch in eval mode (the model's mode is left as it was)."""
    missing = [name for name in ("features", "classifier") if not isinstance(getattr(model, name, None), nn.Module)]
    if missing:
        return f"it has no {' and no '.join(missing)} submodule"
    parameters = [*model.parameters(), *model.buffers()]
    device = parameters[0].device if parameters else torch.device("cpu")
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        whole = model(images)
        parts = model.classifier(features_of(model, images))  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - a model whose parts do not chain: the reason, in one line
        return f"classifier(features(x)) fails ({one_line(exc)})"
    finally:
        model.train(was_training)
    if not isinstance(parts, torch.Tensor) or parts.shape != whole.shape or not torch.allclose(parts, whole, atol=1e-5):
        return "classifier(features(x)) is not what the model returns for x"
    return None


def feature_size(model: nn.Module, images: torch.Tensor) -> int:
    """How many values ``model.features`` gives per image (LeNet: 800), from two of ``images``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        size = int(features_of(model, images[:2]).flatten(1).shape[1])
    model.train(was_training)
    return size


class DannStep:
    """One DANN optimizer step per batch of source indices (a :class:`digitflow.training.step.Step`).

    ``model`` has ``features`` then ``classifier`` (:func:`dann_unsupported_reason`); ``domain_head`` a
    :class:`DomainClassifier`; ``optimizer`` covers both. ``target_images`` are the unlabeled
    target images, float (M, 1, 28, 28) in [0, 1] on the device. ``total_steps`` is the number of
    batches of the whole run, over which ``lambda`` ramps up.
    """

    def __init__(
        self,
        model: nn.Module,
        domain_head: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        target_images: torch.Tensor,
        *,
        total_steps: int,
        adapt: AdaptConfig | None = None,
        augment: Augment | None = None,
        amp: bool = False,
        label_smoothing: float = 0.0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.name = f"{type(model).__name__}-DANN"
        self.model, self.domain_head = model, domain_head
        self.optimizer, self.scheduler = optimizer, scheduler
        self.images, self.labels, self.target_images = images, labels, target_images
        self.adapt = adapt or AdaptConfig(method="dann")
        self.augment = augment
        self.label_smoothing = label_smoothing
        self.total_steps = max(total_steps, 1)
        self.steps_done = 0
        device = images.device
        self.use_amp = amp and bf16_autocast_helps(device)
        self.fix_batch_norm_layout = device.type == "cpu" and self.use_amp
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.domain_loss_sum = torch.zeros((), device=device)
        self.domain_correct = torch.zeros((), device=device, dtype=torch.long)
        self.pseudo_count = torch.zeros((), device=device, dtype=torch.long)
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (source idx, target idx), for tests
        # Mean teacher (Tarvainen and Valpola 2017): pseudo-labels from an exponential moving average of
        # the model's weights, steadier than the model's own predictions; None: the model labels itself.
        self.teacher: nn.Module | None = None
        if self.adapt.teacher_ema > 0 and self.adapt.pseudo_label_weight > 0:
            self.teacher = copy.deepcopy(model).requires_grad_(False)

    def train(self) -> None:
        self.model.train()
        self.domain_head.train()
        if self.teacher is not None:
            self.teacher.train()  # batch statistics: the teacher normalises a target batch by its own

    def reset(self) -> None:
        for total in (self.loss_sum, self.correct, self.domain_loss_sum, self.domain_correct, self.pseudo_count):
            total.zero_()

    def lambda_now(self) -> float:
        """The gradient reversal weight of the next step."""
        return self.adapt.domain_weight * ramp(self.steps_done / self.total_steps, self.adapt.gamma)

    def _context(self, x: torch.Tensor) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.use_amp:
            stack.enter_context(torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False))
        if self.fix_batch_norm_layout:
            stack.enter_context(contiguous_batch_norm(self.model))
        return stack

    def __call__(self, idx: torch.Tensor) -> None:
        batch = idx.shape[0]
        target_idx = torch.randint(self.target_images.shape[0], (batch,), device=idx.device)
        self.last_batch = (idx, target_idx)
        xs, ys = self.images[idx], self.labels[idx]
        xt_clean = self.target_images[target_idx]
        if self.augment is not None:
            xs = self.augment(xs)
        xt = self.augment(xt_clean) if self.augment is not None and self.adapt.target_augment else xt_clean
        lam = self.lambda_now()
        pseudo = self.adapt.pseudo_label_weight > 0
        target_views = torch.cat([xt, xt_clean]) if pseudo and self.teacher is None else xt

        self.optimizer.zero_grad(set_to_none=True)
        with self._context(xs):
            if self.adapt.target_batch_norm:  # each domain normalised by its own batch statistics
                fs, ft_all = features_of(self.model, xs), features_of(self.model, target_views)
            else:
                f = features_of(self.model, torch.cat([xs, target_views]))
                fs, ft_all = f[:batch], f[batch:]
            ft = ft_all[:batch]
            logits_s = self.model.classifier(fs).float()  # type: ignore[operator]
            domain_logits = self.domain_head(grad_reverse(torch.cat([fs, ft]), lam)).float()
            label_loss = F.cross_entropy(logits_s, ys, label_smoothing=self.label_smoothing)
            domain_truth = torch.cat([torch.zeros(batch, device=idx.device), torch.ones(batch, device=idx.device)])
            domain_loss = F.binary_cross_entropy_with_logits(domain_logits, domain_truth)
            loss = label_loss + domain_loss
            if pseudo:
                logits_t = self.model.classifier(ft_all).float()  # type: ignore[operator]
                with torch.no_grad():
                    teacher_logits = logits_t[batch:] if self.teacher is None else self.teacher(xt_clean).float()
                    confidence, guess = teacher_logits.softmax(1).max(1)
                    keep = confidence >= self.adapt.pseudo_label_threshold
                per_image = F.cross_entropy(logits_t[:batch], guess, reduction="none")
                pseudo_loss = (per_image * keep).sum() / batch
                weight = self.adapt.pseudo_label_weight * ramp(self.steps_done / self.total_steps, self.adapt.gamma)
                loss = loss + weight * pseudo_loss
                self.pseudo_count += keep.sum()
        loss.backward()
        self.optimizer.step()
        self.steps_done += 1
        if self.teacher is not None:
            self._update_teacher(self.teacher)

        self.loss_sum += loss.detach() * batch
        self.correct += (logits_s.detach().argmax(1) == ys).sum()
        self.domain_loss_sum += domain_loss.detach() * 2 * batch
        self.domain_correct += ((domain_logits.detach() > 0).float() == domain_truth).sum()

    @torch.no_grad()
    def _update_teacher(self, teacher: nn.Module) -> None:
        """teacher <- ema * teacher + (1 - ema) * model, weights; batch-norm statistics copied."""
        for t, s in zip(teacher.parameters(), self.model.parameters(), strict=True):
            t.lerp_(s, 1.0 - self.adapt.teacher_ema)
        for tb, sb in zip(teacher.buffers(), self.model.buffers(), strict=True):
            tb.copy_(sb)

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        """``loss`` (all terms), source ``accuracy``, ``domain_loss`` and ``domain_accuracy`` (over the
        source and target images of the epoch), ``pseudo_labeled`` (fraction of target images used)."""
        return {
            "loss": float(self.loss_sum) / num_examples,
            "accuracy": float(self.correct) / num_examples,
            "domain_loss": float(self.domain_loss_sum) / (2 * num_examples),
            "domain_accuracy": float(self.domain_correct) / (2 * num_examples),
            "pseudo_labeled": float(self.pseudo_count) / num_examples,
        }

    def end_epoch(self, metrics: dict[str, float]) -> None:
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["lambda"] = self.lambda_now()
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics["loss"])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "domain_head": self.domain_head.state_dict(),
            "optimizer": float_lr(self.optimizer.state_dict()),
            "scheduler": float_lr(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "steps_done": self.steps_done,
            **({"teacher": self.teacher.state_dict()} if self.teacher is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"])
        load_model_state(self.domain_head, state["domain_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = int(state["steps_done"])
        if self.teacher is not None:
            load_model_state(self.teacher, state["teacher"])


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> nn.Module:
    """Replace the running statistics of ``model``'s batch norms by those of ``images`` (AdaBN).

    Exact averages over all of ``images`` (cumulative, ``momentum=None``), in batches; the weights do
    not change. Returns ``model``, in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, images.shape[0], batch_size):
        model(images[start : start + batch_size])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


@dataclass
class DannResult:
    """What :func:`fit_dann` hands back."""

    model: nn.Module  # the adapted model with source batch-norm statistics (in eval mode)
    target_model: nn.Module  # the same weights with the target's statistics (or ``model`` itself)
    domain_head: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0


def dann_settings(config: TrainConfig, adapt: AdaptConfig) -> dict[str, Any]:
    """What a resumed DANN run must share with its checkpoint: the training and adaptation settings."""
    return {**resumable_settings(config), "adapt": to_dict(adapt)}


def fit_dann(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target_images: torch.Tensor,
    config: TrainConfig,
    adapt: AdaptConfig,
    *,
    augment: Augment | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> DannResult:
    """Adapt ``model`` (one with a feature extractor, :func:`dann_unsupported_reason`; on the device of
    ``images``) from labeled source ``images``/``labels``
    to unlabeled ``target_images`` with DANN, in the shared epoch loop (``config.epochs`` epochs over
    the source images; seeding, checkpoints, resume and NaN stop as for :func:`digitflow.training.classifier.fit`).

    With ``adapt.target_batch_norm`` the batch-norm statistics are recomputed after training: the
    source images' for ``model``, the target images' for ``target_model`` (a copy).
    """
    device = images.device
    torch.manual_seed(config.seed + 1)  # the domain head's initial weights, apart from the model's
    in_features = feature_size(model, images)  # the domain head's input: LeNet's 800, another model's own
    domain_head = DomainClassifier(in_features, hidden=adapt.domain_hidden).to(device)
    both = nn.ModuleDict({"model": model, "domain_head": domain_head})
    # build_optimizer names parameters "model.*" / "domain_head.*": param groups name them that way.
    optimizer = build_optimizer(both, config.optimizer, device=device)
    if channels_last_helps(device, config.batch_size):
        model.to(memory_format=torch.channels_last)
    scheduler = build_scheduler(optimizer, config.scheduler, epochs=config.epochs)
    batches = (images.shape[0] + config.batch_size - 1) // config.batch_size
    step = DannStep(
        model,
        domain_head,
        optimizer,
        images,
        labels,
        target_images,
        total_steps=batches * config.epochs,
        adapt=adapt,
        augment=augment,
        amp=config.amp,
        label_smoothing=config.label_smoothing,
        scheduler=scheduler,
    )
    settings = dann_settings(config, adapt)
    history = resume_from(step, checkpoint_path, settings) if resume else []
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
    )
    model.to(memory_format=torch.contiguous_format)
    target_model = model
    if adapt.target_batch_norm:
        target_model = recompute_batch_norm(copy.deepcopy(model), target_images)
        recompute_batch_norm(model, images)
    model.eval()
    domain_head.eval()
    return DannResult(
        model=model,
        target_model=target_model,
        domain_head=domain_head,
        history=result.history,
        checkpoint=result.checkpoint,
        resumed_from_epoch=result.resumed_from_epoch,
    )

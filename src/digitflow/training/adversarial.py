"""Adversarial training: the classifier's step on adversarial batches, in the one epoch loop.

:class:`AdversarialTrainStep` is a :class:`digitflow.training.step.TrainStep` whose :meth:`inputs` hands
the optimizer step the batch's adversarial images instead of the clean ones (after augmentation, if
any); :func:`digitflow.training.classifier.fit` picks it when ``TrainConfig.adversarial.mode`` is set, and
everything else (seeding, schedule, checkpoints, resume, NaN stop, progress) is the loop's.

- "fgsm-rs" (Wong et al. 2020, "Fast is better than free"): a uniform random start in the epsilon
  ball and one signed-gradient step of ``1.25 * eps``, clamped back into the ball and [0, 1]: two
  forward/backward passes per batch.
- "pgd" (Madry et al. 2018): ``steps`` steps of ``2.5 * eps / steps`` from a random start:
  ``steps + 1`` passes per batch.

How the attack treats the model: it runs in training mode, the function the loss is then computed
with (batch statistics in batch norm), under the step's precision (bfloat16 autocast where that
pays). Its forward passes would also move the batch-norm running statistics towards the
intermediate attack iterates, once per attack step, so :func:`digitflow.evaluation.attacks.buffers_kept`
restores them: the running statistics see exactly one batch per optimizer step, the adversarial
batch that is trained on, as in clean training. Gradients are taken with respect to the input only,
so the parameters' ``.grad`` is untouched (and zeroed by the optimizer step anyway).

Random starts come from the global RNG, which the loop seeds per epoch: runs are reproducible and
``--resume`` continues to the same result (the ramp's progress is part of the checkpoint).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from digitflow.config import AdversarialTrainingConfig
from digitflow.evaluation.attacks import default_step_size, pgd
from digitflow.training.step import Augment, TrainStep

FGSM_RS_STEP = 1.25  # FGSM-RS step size / epsilon (Wong et al. 2020)


def attack_schedule(config: AdversarialTrainingConfig, eps: float) -> tuple[int, float]:
    """(steps, step size) of the training attack at epsilon ``eps``."""
    if config.mode == "fgsm-rs":
        return 1, (config.relative_step or FGSM_RS_STEP) * eps
    steps = config.steps
    step_size = config.relative_step * eps if config.relative_step is not None else default_step_size(eps, steps)
    return steps, step_size


class AdversarialTrainStep(TrainStep):
    """A :class:`TrainStep` that trains on the adversarial images of each batch (see the module doc).

    ``epoch_metrics`` adds ``adv_eps``, the epsilon at the end of the epoch; ``loss`` and
    ``accuracy`` are those of the adversarial batches (from the logits before each update).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        adversarial: AdversarialTrainingConfig,
        augment: Augment | None = None,
        amp: bool = False,
        label_smoothing: float = 0.0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        if adversarial.mode not in ("fgsm-rs", "pgd"):
            raise ValueError(f"unknown adversarial training mode {adversarial.mode!r}; known: fgsm-rs, pgd")
        super().__init__(
            model,
            optimizer,
            images,
            labels,
            augment=augment,
            amp=amp,
            label_smoothing=label_smoothing,
            scheduler=scheduler,
        )
        self.adversarial = adversarial
        self.images_seen = 0  # over the whole run (checkpointed): how far the epsilon ramp has got

    def eps(self) -> float:
        """Epsilon for the next batch: ``adversarial.eps``, ramped linearly over ``ramp_epochs``."""
        ramp = self.adversarial.ramp_epochs * self.images.shape[0]
        if ramp <= 0:
            return self.adversarial.eps
        return self.adversarial.eps * min(1.0, self.images_seen / ramp)

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch (augmented, if so configured) replaced by its adversarial images."""
        x, y = super().inputs(idx)
        self.images_seen += idx.shape[0]
        eps = self.eps()  # ramp progress counts this batch: the first batch is already attacked
        if eps == 0:
            return x, y
        steps, step_size = attack_schedule(self.adversarial, eps)
        x_adv = pgd(self.model, x, y, eps, steps=steps, step_size=step_size, random_start=True, forward=self.forward)
        return x_adv, y

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        return {**super().epoch_metrics(num_examples), "adv_eps": self.eps()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "adversarial": {"images_seen": self.images_seen}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.images_seen = int(state.get("adversarial", {}).get("images_seen", 0))

"""Evaluating a classifier: loss, accuracy, per-class accuracy and the confusion matrix on a labelled set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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

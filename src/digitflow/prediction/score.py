"""Scoring a dataset with an exported classifier: class probabilities per image, in the model's framing.

Pure: the images come in, probabilities go out; reading the spec and writing the files are elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from digitflow.data.cache import DigitDataset
from digitflow.data.framing import frame_images
from digitflow.errors import ConfigError
from digitflow.prediction.model import ScoringModel

BATCH_SIZE = 2048  # images per forward pass: big enough that the per-call overhead is noise on a CPU


@dataclass(frozen=True)
class Predictions:
    """What a model predicts for each image of a dataset, in the dataset's order."""

    ids: list[str]  # the image's id (file path, CSV row, index: digitflow.data.ids)
    probabilities: torch.Tensor  # (N, C) float32, each row sums to 1
    classes: tuple[str, ...]  # the model's class names by index
    true_labels: torch.Tensor | None = None  # (N,) int64 when the input has labels, in the model's indices

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64: the predicted class of each image."""
        return self.probabilities.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """(N,) float32: the predicted class's probability."""
        return self.probabilities.amax(dim=1)

    def counts(self) -> list[int]:
        """How many images are predicted to be of each class, by class index."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def accuracy(self) -> float | None:
        """The share of images predicted as labelled; None without labels."""
        if self.true_labels is None:
            return None
        return float((self.labels == self.true_labels).float().mean())


@torch.inference_mode()
def class_probabilities(
    module: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, num_classes: int, batch_size: int = BATCH_SIZE
) -> torch.Tensor:
    """Softmax of the model's logits for float images (N, C, H, W): (N, num_classes) float32.

    ConfigError (one line) if the model's outputs are not (batch, num_classes) logits.
    """
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    out = torch.empty(len(images), num_classes)
    for start in range(0, len(images), batch_size):
        logits = module(images[start : start + batch_size])
        if logits.dim() != 2 or logits.shape[1] != num_classes:
            raise ConfigError(
                f"the model returns {tuple(logits.shape)} for {len(images[start : start + batch_size])} images; "
                f"its record names {num_classes} classes"
            )
        out[start : start + batch_size] = logits.float().softmax(dim=1)
    return out


def check_classes(model: ScoringModel, classes: Sequence[str], what: str) -> None:
    """ConfigError (one line) unless a labelled input's ``classes`` are the model's, in the same order."""
    if tuple(classes) != model.classes:
        theirs, ours = tuple(classes), model.classes
        raise ConfigError(
            f"the classes of {what} ({len(theirs)}: {', '.join(theirs[:3])}, ...) are not those of the model "
            f"({len(ours)}: {', '.join(ours[:3])}, ...); predict on data of the model's classes, or drop its labels"
        )


def predict(
    model: ScoringModel,
    images_uint8: torch.Tensor,
    ids: list[str],
    labels: torch.Tensor | None = None,
    batch_size: int = BATCH_SIZE,
) -> Predictions:
    """Score uint8 images (N, H, W) of any size: framed as the model's record says (images of its size
    pass unchanged, ``/ 255``), run in batches. ``labels`` (N,) are the images' classes in the model's
    indices (the caller checks the vocabularies with :func:`check_classes`), None for unlabeled images."""
    channels, height, width = model.metadata.input_shape
    if channels != 1 or height != width:
        shape = model.metadata.input_shape
        raise ConfigError(f"the model takes {shape} images; digitflow predicts on square grayscale images")
    n = len(images_uint8)
    if len(ids) != n or (labels is not None and len(labels) != n):
        raise ValueError(f"{n} images but {len(ids)} ids or {n if labels is None else len(labels)} labels")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    probabilities = torch.empty(n, len(model.classes))
    for start in range(0, n, batch_size):  # framed a batch at a time: float images take 4x the uint8 memory
        framed = frame_images(images_uint8[start : start + batch_size], model.metadata.frame, size=height)
        probabilities[start : start + batch_size] = class_probabilities(
            model.module, framed, len(model.classes), batch_size
        )
    return Predictions(ids, probabilities, model.classes, labels)


def predict_dataset(
    model: ScoringModel, dataset: DigitDataset, ids: list[str], batch_size: int = BATCH_SIZE
) -> Predictions:
    """:func:`predict` on a loaded dataset: with its labels when it has them (every image labelled, its
    classes the model's: ConfigError otherwise), without for unlabeled images (a CSV without its label
    column, a folder without class sub-folders)."""
    labelled = bool(dataset.classes) and len(dataset) > 0 and bool((dataset.labels >= 0).all())
    if labelled:
        check_classes(model, dataset.classes, dataset.spec)
    return predict(model, dataset.images, ids, dataset.labels if labelled else None, batch_size)

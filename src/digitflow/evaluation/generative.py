"""Measuring what a generator generates, with a trained classifier (the judge) as the yardstick.

* :func:`judge_outputs`: the judge's features (penultimate layer by default) and class probabilities.
* :func:`feature_statistics` and :func:`frechet_distance`: the Fréchet distance between two sets of
  features, each summarised by its mean and covariance (FID, with the judge in Inception's place).
* :func:`class_metrics`: coverage (classes that get at least a given share of the samples), entropy of
  the predicted-class histogram (nats) and mean confidence (maximum softmax).

Everything is computed in float64 on the CPU from features the judge computes on its own device; the
matrix square root goes through symmetric eigendecompositions, which for covariance matrices
(symmetric, positive semi-definite) gives the same trace as ``scipy.linalg.sqrtm`` without its complex
round-off parts.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from digitflow.config import FeatureLayer
from digitflow.errors import ConfigError

if TYPE_CHECKING:
    from digitflow.models import LeNet

FEATURE_LAYERS: tuple[str, ...] = typing.get_args(FeatureLayer)


def as_lenet(model: nn.Module, what: str = "the judge") -> LeNet:
    """An eager LeNet with ``model``'s weights, for a judge loaded in whatever form MLflow gives it back:
    an eager LeNet, a TorchScript one (the registered model) or a torch.export one (what MLflow 3 logs by
    default, whose submodules cannot be called on their own, as :func:`judge_outputs` needs). All three
    keep LeNet's parameter and buffer names. A one-line ConfigError for anything else."""
    from digitflow.models import LeNet

    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    head = state.get("classifier.3.weight")
    if head is None or head.dim() != 2:
        raise ConfigError(
            f"{what} is not a digitflow LeNet classifier (no classifier.3 layer among its weights); "
            "give the URI of a model trained by digitflow run"
        )
    lenet = LeNet(num_classes=int(head.shape[0]))
    try:
        lenet.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"{what} is not a digitflow LeNet classifier ({detail})") from None
    return lenet.eval()


def check_judge(judge: LeNet, num_classes: int, what: str = "the judge") -> None:
    """A one-line ConfigError unless ``judge`` is a LeNet-like classifier (``mean``, ``std``,
    ``features``, ``classifier``) that predicts ``num_classes`` classes."""
    missing = [name for name in ("mean", "std", "features", "classifier") if not hasattr(judge, name)]
    if missing:
        raise ConfigError(
            f"{what} is not a digitflow LeNet classifier (it has no {', '.join(missing)}); "
            "give the URI of a model trained by digitflow run"
        )
    probe = torch.zeros(1, 1, 28, 28, device=judge.mean.device)
    with torch.inference_mode():
        judge.eval()
        predicted = int(judge(probe).shape[-1])
    if predicted != num_classes:
        raise ConfigError(
            f"{what} predicts {predicted} classes, but the GAN's training data has {num_classes}; "
            "give a judge trained on the same dataset"
        )


@torch.inference_mode()
def judge_outputs(
    judge: LeNet, images: torch.Tensor, *, layer: FeatureLayer = "penultimate", batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's features and class probabilities for ``images`` (N, 1, 28, 28) in [0, 1].

    Returns features (N, D) float64 and probabilities (N, C) float32, both on the CPU. ``layer``
    "penultimate" is the input of the judge's last linear layer (LeNet: 500 values after ReLU);
    "conv" the flattened output of its convolutional part (LeNet: 800). It works for an eager LeNet
    and a TorchScript one (the registered model) alike: it calls the same submodules LeNet.forward
    does (normalisation, ``features``, then ``classifier`` layer by layer).
    """
    if layer not in FEATURE_LAYERS:
        raise ConfigError(f"unknown feature layer {layer!r}; choose one of: {', '.join(FEATURE_LAYERS)}")
    judge.eval()
    mean, std = judge.mean, judge.std
    head = list(judge.classifier.children())  # LeNet: Flatten, Linear, ReLU, Linear
    feats, probs = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(mean.device)
        h = judge.features((x.to(mean.dtype) - mean) / std)
        conv = h.flatten(1)
        for module in head[:-1]:
            h = module(h)
        logits = head[-1](h)
        feats.append((conv if layer == "conv" else h).double().cpu())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


@dataclass(frozen=True)
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a set of features, float64."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def feature_statistics(features: torch.Tensor) -> FeatureStats:
    """Mean and (unbiased, N - 1) covariance of ``features`` (N, D), as numpy's ``np.cov(rowvar=False)``."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ConfigError(f"feature statistics need at least 2 feature vectors (N, D), got {list(features.shape)}")
    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return FeatureStats(mean=mean, cov=cov, count=int(x.shape[0]))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from round-off -> 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    root: torch.Tensor = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    return root


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``.

    ``tr((S_a S_b)^(1/2))`` is computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``: the same eigenvalues,
    but of a symmetric PSD matrix, so real and non-negative up to round-off.
    """
    if a.mean.shape != b.mean.shape:
        raise ConfigError(f"feature sets of different sizes: {a.mean.shape[0]} and {b.mean.shape[0]} values")
    diff = a.mean - b.mean
    root_a = _sqrt_psd(a.cov)
    middle = root_a @ b.cov @ root_a
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    distance = diff @ diff + a.cov.trace() + b.cov.trace() - 2 * eigenvalues.sqrt().sum()
    return max(float(distance), 0.0)  # exact 0 for a set with itself, not -1e-12


def class_metrics(probabilities: torch.Tensor, *, min_share: float = 0.02) -> dict[str, float]:
    """Coverage, entropy and confidence of a judge's class probabilities (N, C) for N samples.

    * ``coverage``: number of classes that are the arg max of at least ``min_share`` of the samples;
    * ``entropy``: of the histogram of arg max classes, in nats (``ln C`` when every class gets as many);
    * ``confidence``: mean maximum probability.
    """
    counts = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1])
    return {
        "coverage": float(coverage(counts, min_share)),
        **histogram_metrics(counts),
        "confidence": float(probabilities.max(1).values.double().mean()),
    }


def histogram_metrics(counts: torch.Tensor) -> dict[str, float]:
    """``entropy`` (nats) of a histogram of class counts (C,)."""
    shares = counts.double() / counts.sum()
    nonzero = shares[shares > 0]
    return {"entropy": max(0.0, float(-(nonzero * nonzero.log()).sum()))}  # no -0.0 for one class


def coverage(counts: torch.Tensor, min_share: float = 0.02) -> int:
    """Number of classes with at least ``min_share`` of the samples, from class counts (C,)."""
    return int((counts.double() / counts.sum() >= min_share).sum())


MAX_ENTROPY_10 = math.log(10)  # 2.303 nats: ten classes, equally often

"""Models of a user's own for the tests of ``--model package.module:Factory``: tiny ones that keep the
contract (one with a feature extractor for DANN, one without), one that TorchScript cannot compile, and
factories that break the contract in each way the pipeline must report in one line."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A few thousand parameters, normalising its own input, with ``features`` and ``classifier``
    (DANN can adapt it)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.1307))
        self.register_buffer("std", torch.tensor(0.3081))
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4)
        )  # (N, 8, 4, 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


def tiny(num_classes: int) -> nn.Module:
    """A factory function (the spec ``tests.toy_models:tiny``)."""
    return TinyNet(num_classes)


class FlatNet(nn.Module):
    """Logistic regression on the pixels: keeps the contract, but has no feature extractor."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


class BranchyNet(nn.Module):
    """Sums two branches with a generator expression, which ``torch.jit.script`` cannot compile
    (tracing and ``torch.export`` can)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Linear(28 * 28, num_classes) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        out: torch.Tensor = sum(branch(flat) for branch in self.branches)
        return out


def not_a_module(num_classes: int) -> str:
    return "a model"


def wrong_width(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes + 1))


def wants_rgb(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes))


def failing(num_classes: int) -> nn.Module:
    raise ValueError(f"no model for {num_classes} classes")


NOT_CALLABLE = 42

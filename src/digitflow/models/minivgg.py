"""MiniVGG: a small VGG-style network for 28x28 grayscale digits, the second built-in model (``--model minivgg``).

conv 1->32 3x3, BatchNorm, ReLU, max-pool 2; conv 32->64 3x3, BatchNorm, ReLU; conv 64->64 3x3, BatchNorm,
ReLU, max-pool 2; fc 1024->128, ReLU; fc 128->10.

Stacked 3x3 convolutions see as far as LeNet's 5x5 ones with more non-linearity per multiply-add: about
5.5 M multiply-adds per image against LeNet's 2.3 M, and 188 k parameters against its 431 k (most of
LeNet's are its 800->500 layer). Channel counts are multiples of 16, so PyTorch's channels-last batch norm
runs its fast CPU kernel (digitflow.training.memory_layout). Chosen by measurement on the standard protocol
(docs/measurements.md "The standard protocol"; docs/models.md says what was tried).

Like LeNet it normalizes its own input (MNIST's mean and standard deviation) and casts it to its own
floating type, so it and its exported files take float images in [0, 1] of any floating dtype; and it has
``features`` and ``classifier`` submodules, so ``--adapt dann`` can put its domain classifier on the 1,024
features.
"""

import torch
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution without padding (a batch norm follows, so no bias), batch norm, ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class MiniVGG(nn.Module):
    """Classifier: (N, 1, 28, 28) float (any floating dtype) in [0, 1] -> (N, num_classes) logits."""

    input_shape = (1, 28, 28)
    mean: torch.Tensor  # buffers, () float: the MNIST normalization the model applies itself
    std: torch.Tensor

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))
        self.features = nn.Sequential(
            *_conv(1, 32),  # (N, 32, 26, 26)
            nn.MaxPool2d(2),  # (N, 32, 13, 13)
            *_conv(32, 64),  # (N, 64, 11, 11)
            *_conv(64, 64),  # (N, 64, 9, 9)
            nn.MaxPool2d(2),  # (N, 64, 4, 4) -> 1,024 features
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std  # float64 in, the model's dtype inside
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits

"""LeNet for 28x28 grayscale digits, as in the seed notes.

conv 1->20 5x5, ReLU, BatchNorm, max-pool 2; conv 20->50 5x5, ReLU, BatchNorm, max-pool 2;
fc 800->500, ReLU; fc 500->10.

The model normalizes its own input (mean 0.1307, std 0.3081, MNIST's statistics) so that it takes
images as float in [0, 1]. That keeps the preprocessing inside the exported TorchScript/torch.export
file: a user of the file needs no code of ours to feed it. For the same reason it casts its input to
its own floating type first: images that arrive as float64 (numpy's and JSON's default, as in a request
to an MLflow scoring server) work as they are.
"""

import torch
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class LeNet(nn.Module):
    """Classifier: (N, 1, 28, 28) float (any floating dtype) in [0, 1] -> (N, num_classes) logits."""

    input_shape = (1, 28, 28)
    mean: torch.Tensor  # buffers, () float: the MNIST normalization the model applies itself
    std: torch.Tensor

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, kernel_size=5),  # (N, 20, 24, 24)
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(20),
            nn.MaxPool2d(2),  # (N, 20, 12, 12)
            nn.Conv2d(20, 50, kernel_size=5),  # (N, 50, 8, 8)
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(50),
            nn.MaxPool2d(2),  # (N, 50, 4, 4) -> 800 features
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std  # float64 in, the model's dtype inside
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits

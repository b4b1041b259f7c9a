"""Model definitions. Each model file imports nothing but torch."""

from digitflow.models.lenet import MNIST_MEAN, MNIST_STD, LeNet
from digitflow.models.minivgg import MiniVGG

__all__ = ["MNIST_MEAN", "MNIST_STD", "LeNet", "MiniVGG"]

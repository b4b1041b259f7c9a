"""Model definitions. Each model file imports nothing but torch."""

from digitflow.models.lenet import LeNet, MNIST_MEAN, MNIST_STD

__all__ = ["LeNet", "MNIST_MEAN", "MNIST_STD"]

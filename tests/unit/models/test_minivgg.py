"""MiniVGG: output shape, the exact layer stack, built-in normalization, the feature extractor DANN uses."""

import pytest
import torch

from digitflow.models import MNIST_MEAN, MNIST_STD, MiniVGG
from digitflow.training.dann import dann_unsupported_reason, feature_size
from tests.unit.models.test_model import _layer


@pytest.fixture
def model() -> MiniVGG:
    torch.manual_seed(0)
    return MiniVGG()


@pytest.mark.parametrize("n", [1, 3])
def test_output_shape_in_both_modes(model: MiniVGG, n: int):
    x = torch.rand(n, 1, 28, 28)
    assert model.eval()(x).shape == (n, 10)
    model.train()
    out = model(torch.rand(max(n, 2), 1, 28, 28))  # batch norm needs two images in training mode
    assert out.shape == (max(n, 2), 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert MiniVGG(num_classes=4).eval()(x).shape == (n, 4)


def test_layer_stack_and_size(model: MiniVGG):
    assert [_layer(m) for m in model.features] == [
        ("Conv2d", 1, 32, (3, 3), (1, 1), (0, 0)),
        ("BatchNorm2d", 32),
        ("ReLU",),
        ("MaxPool2d", 2, 2),
        ("Conv2d", 32, 64, (3, 3), (1, 1), (0, 0)),
        ("BatchNorm2d", 64),
        ("ReLU",),
        ("Conv2d", 64, 64, (3, 3), (1, 1), (0, 0)),
        ("BatchNorm2d", 64),
        ("ReLU",),
        ("MaxPool2d", 2, 2),
    ]
    assert [_layer(m) for m in model.classifier] == [
        ("Flatten",),
        ("Linear", 1024, 128),
        ("ReLU",),
        ("Linear", 128, 10),
    ]
    assert sum(p.numel() for p in model.parameters()) == 188_394
    assert all(m.num_features % 16 == 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_it_normalizes_its_own_input_and_takes_any_float_dtype(model: MiniVGG):
    model.eval()
    assert float(model.mean) == pytest.approx(MNIST_MEAN)
    assert float(model.std) == pytest.approx(MNIST_STD)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x.double()), model(x))


def test_dann_can_adapt_it(model: MiniVGG):
    assert dann_unsupported_reason(model) is None
    assert feature_size(model, torch.rand(2, 1, 28, 28)) == 1024

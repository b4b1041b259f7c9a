"""LeNet: output shape, the exact layer stack of the spec, built-in normalization, parameter count."""

import pytest
import torch
from torch import nn

from digitflow.models import MNIST_MEAN, MNIST_STD, LeNet


def _layer(m: nn.Module) -> tuple:
    """A comparable description of one layer: type plus the settings that define it."""
    if isinstance(m, nn.Conv2d):
        return ("Conv2d", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.BatchNorm2d):
        return ("BatchNorm2d", m.num_features)
    if isinstance(m, nn.MaxPool2d):
        return ("MaxPool2d", m.kernel_size, m.stride or m.kernel_size)
    if isinstance(m, nn.Linear):
        return ("Linear", m.in_features, m.out_features)
    return (type(m).__name__,)


@pytest.fixture
def model() -> LeNet:
    torch.manual_seed(0)
    return LeNet()


@pytest.mark.parametrize("n", [1, 3, 32])
def test_output_shape(model: LeNet, n: int):
    x = torch.rand(n, 1, 28, 28)
    model.eval()
    assert model(x).shape == (n, 10)
    model.train()
    out = model(x)
    assert out.shape == (n, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_num_classes_sets_the_output_width():
    assert LeNet(num_classes=5).eval()(torch.rand(2, 1, 28, 28)).shape == (2, 5)


def test_layer_stack_matches_the_spec(model: LeNet):
    assert [_layer(m) for m in model.features] == [
        ("Conv2d", 1, 20, (5, 5), (1, 1), (0, 0)),
        ("ReLU",),
        ("BatchNorm2d", 20),
        ("MaxPool2d", 2, 2),
        ("Conv2d", 20, 50, (5, 5), (1, 1), (0, 0)),
        ("ReLU",),
        ("BatchNorm2d", 50),
        ("MaxPool2d", 2, 2),
    ]
    assert [_layer(m) for m in model.classifier] == [
        ("Flatten",),
        ("Linear", 800, 500),
        ("ReLU",),
        ("Linear", 500, 10),
    ]
    # nothing else holds parameters: every parameter belongs to the layers listed above
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"features", "classifier"}


def test_parameter_count(model: LeNet):
    conv1 = 1 * 20 * 25 + 20
    bn1 = 2 * 20
    conv2 = 20 * 50 * 25 + 50
    bn2 = 2 * 50
    fc1 = 800 * 500 + 500
    fc2 = 500 * 10 + 10
    expected = conv1 + bn1 + conv2 + bn2 + fc1 + fc2
    assert expected == 431_220
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_normalization_constants_are_buffers_not_parameters(model: LeNet):
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)
    buffers = dict(model.named_buffers())
    assert buffers["mean"].item() == pytest.approx(0.1307)
    assert buffers["std"].item() == pytest.approx(0.3081)
    assert "mean" not in dict(model.named_parameters())
    state = model.state_dict()  # saved with the weights, so checkpoints and exports carry them
    assert "mean" in state
    assert "std" in state


def test_normalization_happens_inside_forward(model: LeNet):
    model.eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    body = nn.Sequential(model.features, model.classifier)
    with torch.no_grad():
        expected = body((x - 0.1307) / 0.3081)  # the stack fed by hand-normalized input
        unnormalized = body(x)
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert not torch.allclose(model(x), unnormalized, atol=1e-3)

        # a constant image at the mean is the zero image after normalization
        mean_image = torch.full((1, 1, 28, 28), 0.1307)
        assert torch.allclose(model(mean_image), body(torch.zeros(1, 1, 28, 28)), atol=1e-5)

        # the forward pass reads the buffers: moving the mean moves the output
        before = model(x)
        model.mean.fill_(0.5)
        assert not torch.allclose(model(x), before, atol=1e-3)
        assert torch.allclose(model(x), body((x - 0.5) / 0.3081), atol=1e-5)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")
def test_float64_images_give_the_float32_answer_eager_and_scripted(model: LeNet):
    # numpy, JSON and a request to an MLflow scoring server give float64; the model casts them itself
    model.eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(model(x.double()), expected)
        assert torch.equal(scripted(x.double()), expected)
        assert model(x.double()).dtype == torch.float32

"""PixelInput: every exported classifier takes float pixels in [0, 1] and refuses anything else in one line."""

import warnings

import pytest
import torch
from torch import nn

from digitflow.export.exporters import export_program, export_torchscript, load_export
from digitflow.export.inputs import PixelInput, for_export
from digitflow.models import LeNet


class Plain(nn.Module):
    """A model of a user's own: no input_shape, no cast, no normalisation of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model", [LeNet(), Plain()], ids=["lenet", "own-model"])
def test_the_wrapper_gives_the_models_logits_for_float_pixels_of_any_dtype(model, images):
    wrapped = for_export(model.eval())
    assert for_export(wrapped) is wrapped
    assert wrapped.input_shape == (1, 28, 28)
    with torch.inference_mode():
        expected = model(images)
        assert torch.equal(wrapped(images), expected)
        assert torch.allclose(wrapped(images.double()), expected)  # numpy's and JSON's float64, cast


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (torch.rand(2, 1, 16, 16), "takes images of shape (N, 1, 28, 28), got [2, 1, 16, 16]"),
        (torch.rand(28, 28), "got [28, 28]"),
        (torch.full((2, 1, 28, 28), 255, dtype=torch.uint8), "float pixels in [0, 1], got integers: divide bytes"),
    ],
    ids=["size", "no-batch", "bytes"],
)
def test_a_wrong_input_is_one_line_in_python_and_in_the_torchscript_file(bad, says, tmp_path):
    wrapped = PixelInput(LeNet().eval())
    with pytest.raises(ValueError, match="this model takes") as info:
        wrapped(bad)
    assert says in str(info.value)
    scripted = load_export(export_torchscript(wrapped, torch.rand(1, 1, 28, 28), tmp_path / "m.pt"))
    with pytest.raises(torch.jit.Error) as scripted_info:  # what a C++ or Python user of lenet.pt sees
        scripted(bad)
    assert says in str(scripted_info.value)


def test_traced_and_torch_export_files_take_the_same_pixels(images, tmp_path):
    wrapped = PixelInput(LeNet().eval())
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit._trace.TracerWarning)  # the checks stay out of the trace, silently
        traced = export_torchscript(wrapped, images[:1], tmp_path / "t.pt", mode="trace")
    program = export_program(wrapped, images[:1], tmp_path / "m.pt2")
    with torch.inference_mode():
        expected = wrapped.model(images)
        for path in (traced, program):
            assert torch.allclose(load_export(path)(images), expected, atol=1e-6)

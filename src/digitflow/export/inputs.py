"""What every exported classifier takes: the wrapper that keeps the preprocessing inside the exported file.

LeNet normalises its own input (MNIST's mean and std), so its exported files take pixels in [0, 1] and a
consumer needs none of this project's code. :class:`PixelInput` keeps that contract for any classifier
the pipeline exports (LeNet or a model of a user's own, which the pipeline trains on the same [0, 1]
pixels): it is what :func:`for_export` wraps around the model before each export (TorchScript,
torch.export, AOTInductor), so every file takes the same input and refuses a wrong one in one line.
"""

from collections.abc import Callable

import torch
from torch import nn

# torch.jit.is_tracing (TorchScript knows it), typed here: the file's other lines are strictly typed, and a
# "# type: ignore" comment inside forward would be read by TorchScript's parser as a type comment
_is_tracing: Callable[[], bool] = torch.jit.is_tracing  # type: ignore[attr-defined]

INPUT_SHAPE = (1, 28, 28)  # (C, H, W) of a model without an ``input_shape`` of its own
INPUT = "float images (N, 1, 28, 28), pixels in [0, 1] (bytes / 255), a white digit on black; any float dtype"


class PixelInput(nn.Module):
    """An exported classifier: float pixels (N, C, H, W) in [0, 1] -> (N, classes) logits.

    The pixels are cast to the model's dtype (float64 from numpy or a JSON request works as it is); the
    model inside does its own normalisation. A batch of another shape, or of integers (bytes 0-255 not
    yet divided by 255), raises a ValueError whose one line says what the model takes, in Python and in
    C++ (TorchScript scripted; a traced file keeps no check); torch.export and AOTInductor programs
    check the shape and dtype fixed at export themselves.
    """

    anchor: torch.Tensor

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        shape = tuple(int(d) for d in getattr(model, "input_shape", None) or INPUT_SHAPE)
        self.input_shape = shape
        self.channels, self.height, self.width = shape
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
        self.register_buffer("anchor", torch.zeros((), dtype=dtype))  # () buffer: its dtype is the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_tracing():  # torch.jit.trace records the ops alone: no check survives it (and its sizes warn)
            self._check(x)
        logits: torch.Tensor = self.model(x.to(self.anchor.dtype))
        return logits

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] != self.height or x.shape[3] != self.width:
            raise ValueError(
                "this model takes images of shape (N, "
                + str(self.channels)
                + ", "
                + str(self.height)
                + ", "
                + str(self.width)
                + "), got "
                + str(list(x.shape))
            )
        if not x.is_floating_point():
            raise ValueError("this model takes float pixels in [0, 1], got integers: divide bytes 0-255 by 255 first")


def class_name(model: nn.Module) -> str:
    """The class an error names: the model's, not the :class:`PixelInput` around it (``BranchyNet``, not
    ``PixelInput``), so a user reads which of their models failed."""
    inner = model.model if isinstance(model, PixelInput) else model
    return type(inner).__name__


def for_export(model: nn.Module) -> PixelInput:
    """``model`` inside :class:`PixelInput` (unless it is one already): what the exporters write."""
    return model if isinstance(model, PixelInput) else PixelInput(model)

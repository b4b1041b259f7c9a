"""Memory layout on the CPU: batch norm on contiguous memory where the channels-last kernel is slow.

The engine trains in channels-last (NHWC) memory, which lets oneDNN pick its faster convolution and
pooling kernels. PyTorch's CPU batch norm in channels-last bfloat16, however, vectorizes over the
channels 16 at a time, and it is 3-8x slower when the channel count is not a multiple of 16, as
LeNet's 20 and 50 are. Forward + backward of one training batch norm, 737,280 bf16 activations
(batch 64), 2-core AVX512-BF16 CPU, torch 2.14.1:

    channels   channels-last kernel   same layer on contiguous memory (copies included)
    16         0.45 ms                1.09 ms
    20         3.24 ms                1.16 ms
    24         1.26 ms                1.00 ms
    32         0.36 ms                1.08 ms
    50         1.70 ms                1.19 ms

:func:`contiguous_batch_norm` therefore runs those layers on a contiguous copy of their input and
copies the result back to channels-last, so the layers around them keep their fast layout. The
copies are an autograd function whose backward pass copies the gradient back the same way, so the
batch-norm backward kernel also runs on contiguous memory (a plain ``.contiguous()`` would hand it a
channels-last gradient and lose the gain). Values are those of the contiguous kernel: not bit-equal
to the channels-last kernel, the same for the same seed on the same CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

SLOW_CHANNEL_MULTIPLE = 16  # channel counts that are not a multiple of this hit the slow kernel


class _CopyToLayout(torch.autograd.Function):
    """``x`` copied into ``layout``; the gradient is copied back into ``grad_layout`` (x's own)."""

    @staticmethod
    def forward(ctx, x: Tensor, layout: torch.memory_format, grad_layout: torch.memory_format) -> Tensor:
        ctx.grad_layout = grad_layout
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad.contiguous(memory_format=ctx.grad_layout), None, None


def batch_norm_runs_slow(x: Tensor, num_features: int) -> bool:
    """Whether PyTorch's batch norm on ``x`` would take the slow channels-last bfloat16 CPU kernel."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.dim() == 4
        and num_features % SLOW_CHANNEL_MULTIPLE != 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()  # (N, C, 1, 1) and C == 1 tensors are both: nothing to gain
    )


@contextlib.contextmanager
def contiguous_batch_norm(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's ``BatchNorm2d`` layers run on contiguous memory whenever their
    input would take the slow channels-last kernel (:func:`batch_norm_runs_slow`); outputs and
    gradients keep the layout they would have had. Other inputs, and the model after the block, are
    untouched: the layers' own ``forward`` is restored on exit, also after an exception.
    """
    wrapped = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and "forward" not in vars(m)]
    for module in wrapped:
        module.forward = _contiguous_forward(module)  # instance attribute: shadows the class's forward
    try:
        yield
    finally:
        for module in wrapped:
            del module.forward


def _contiguous_forward(module: nn.BatchNorm2d):
    plain = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        if not batch_norm_runs_slow(x, module.num_features):
            return plain(x)
        y = plain(_CopyToLayout.apply(x, torch.contiguous_format, torch.channels_last))
        return _CopyToLayout.apply(y, torch.channels_last, torch.contiguous_format)

    return forward

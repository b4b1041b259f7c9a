"""Choosing the torch device, and what pays on it."""

import contextlib
from collections.abc import Iterator

import torch

from digitflow.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; any other name must be a usable torch device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps ({exc})") from None
    if device.type not in ("cpu", "cuda", "mps"):  # torch also parses meta, xpu, hpu, ...: not training devices here
        raise ConfigError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"device {name!r} asked for, but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} asked for, but MPS is not available here; use --device auto or cpu")
    return device


def bf16_autocast_helps(device: torch.device) -> bool:
    """Whether bfloat16 mixed precision speeds training up on ``device``.

    True on CUDA, and on CPUs with native bfloat16 instructions (AVX512-BF16 or AMX), where autocast
    runs convolutions and matmuls in bfloat16 and halves the memory traffic of the activations. Other
    CPUs emulate bfloat16 and would be slower than float32; MPS autocast is left out.
    """
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent -> assume no
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def training_precision(device: torch.device, amp: bool) -> str:
    """What the engine trains in on ``device`` with ``amp`` set so: "bfloat16 autocast" or "float32"."""
    return "bfloat16 autocast" if amp and bf16_autocast_helps(device) else "float32"


# Batch size from which channels-last (NHWC) beats the default layout for an eagerly run LeNet step on
# a CUDA device, bf16 autocast; a step replayed as a CUDA graph gains from it at every batch size.
# Measured on an H200 (scripts/gpu_explore.py; docs/training.md "Training on a GPU").
CUDA_CHANNELS_LAST_MIN_BATCH = 1024


def channels_last_helps(device: torch.device, batch_size: int, cuda_graphs: bool = False) -> bool:
    """Whether the engine should train in channels-last memory on ``device``.

    On the CPU always (oneDNN's NHWC convolutions are faster: +18% images/s for LeNet, batch 64). On
    CUDA with a captured step, or from :data:`CUDA_CHANNELS_LAST_MIN_BATCH` images when eager: at
    smaller batches the eager step is launch-bound and NHWC's extra layout kernels cost more than
    its faster convolutions save. Elsewhere never.
    """
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return cuda_graphs or batch_size >= CUDA_CHANNELS_LAST_MIN_BATCH
    return False


# Batch size from which cuDNN's autotuner (torch.backends.cudnn.benchmark) pays for LeNet on CUDA: its
# default heuristics pick FFT and naive weight-gradient kernels for these small convolutions. On an
# H200, float32, CUDA graph: +12% images/s at batch 4096 and 8000, nothing at 512, where the tuning
# itself made the time to 0.99 on the 8k protocol longer (0.125 s against 0.098 s).
CUDA_CUDNN_AUTOTUNE_MIN_BATCH = 2048


def cudnn_autotuning_helps(device: torch.device, batch_size: int) -> bool:
    """Whether to let cuDNN time its algorithms for this run (CUDA, large batches)."""
    return device.type == "cuda" and batch_size >= CUDA_CUDNN_AUTOTUNE_MIN_BATCH


@contextlib.contextmanager
def cudnn_autotuning(on: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` switched on inside the block if ``on`` (a global flag of
    torch's: left as it was found on the way out; never switched off if the caller had it on)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = saved or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved

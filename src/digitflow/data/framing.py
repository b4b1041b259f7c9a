"""Turning uint8 digit images of any size into the model's input: float (N, 1, 28, 28) in [0, 1].

MNIST digits were prepared by LeCun et al. as: fit the digit's bounding box into 20x20 keeping its
aspect ratio (anti-aliased), then paste it into a 28x28 canvas so that its centre of mass sits at
the centre. USPS digits instead fill a 16x16 frame. A model trained on one framing and tested on the
other is mostly measuring the framing, so preprocessing a dataset whose images are not 28x28 is a
named choice (``DataConfig.target_preprocess``, see :data:`PREPROCESSORS`):

``mnist-frame`` (default)
    LeCun's MNIST preparation: the digit's bounding box is scaled to fit 20x20 keeping its aspect
    ratio (area resampling, i.e. exact box-filter anti-aliasing, for up- and downscaling alike),
    then moved by whole pixels so that its centre of mass falls within half a pixel of pixel
    (14, 14) of the 28x28 canvas, where MNIST has it.
``resize``
    The seed notes' recipe: a bicubic (anti-aliased) resize of the whole image to 28x28.

Images that already have the model's size pass through :func:`frame_images` unchanged in both
modes: they are taken to be MNIST-framed already (MNIST itself, Fashion-MNIST...). Reframing MNIST
reproduces it exactly for about 75% of the test digits, but moves others by a pixel (their centre
of mass rounds the other way) or rescales those whose thresholded box is under 20 pixels; passing
through keeps the 28x28 path bit-for-bit the plain ``/ 255`` conversion that training on MNIST
uses. The same function therefore serves a training source and a target: a 16x16 USPS training set
and a 16x16 USPS target are framed identically, and a 28x28 MNIST target of a USPS-trained model
is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from digitflow.errors import ConfigError

MODEL_SIZE = 28  # LeNet.input_shape[-1]; the canvas every preprocessor produces by default
MNIST_BOX = 20  # the digit box inside MNIST's 28x28 canvas
DEFAULT_THRESHOLD = 0.2  # fraction of an image's peak intensity that counts as ink for the bbox
_CHUNK_PIXELS = 2**24  # float pixels per vectorised step: bounds the working memory on big datasets


def _chunk(images: Tensor, size: int) -> int:
    """Images per vectorised step, so that a step's float working set stays near 64 MiB."""
    pixels = max(images.shape[-2] * images.shape[-1], size * size, images.shape[-2] * size)
    return max(1, _CHUNK_PIXELS // pixels)


def _as_float(images_uint8: Tensor) -> Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    return images_uint8.unsqueeze(1).to(torch.float32).div_(255.0)


def resize(images_uint8: Tensor, size: int = MODEL_SIZE) -> Tensor:
    """Bicubic, anti-aliased resize of the whole image to ``size`` x ``size`` (the seed notes' way).

    Args:
        images_uint8: (N, H, W) uint8.
        size: output height and width.

    Returns:
        (N, 1, size, size) float32 in [0, 1]; the whole frame is stretched, aspect ratio included.
    """
    if tuple(images_uint8.shape[-2:]) == (size, size):
        return _as_float(images_uint8)
    out = torch.empty(len(images_uint8), 1, size, size, device=images_uint8.device)
    step = _chunk(images_uint8, size)
    for start in range(0, len(images_uint8), step):
        x = _as_float(images_uint8[start : start + step])
        # antialias=True matches torchvision's tensor Resize(..., BICUBIC); bicubic overshoots,
        # hence the clamp.
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        out[start : start + step] = x.clamp_(0.0, 1.0)
    return out


def _area_weights(lo: Tensor, scale: Tensor, n_in: int, n_out: int) -> Tensor:
    """Per-image 1-D area-resampling matrices.

    Output pixel ``u`` covers the source interval ``[lo + u / scale, lo + (u + 1) / scale)`` (in
    source pixel units, pixel ``x`` covering ``[x, x + 1)``); its value is the area-weighted mean of
    the source pixels it overlaps, so ``weight[u, x] = overlap * scale``.

    Args:
        lo: (N,) source coordinate of the output's left (top) edge.
        scale: (N,) output pixels per source pixel.
        n_in, n_out: source and output lengths.

    Returns:
        (N, n_out, n_in) float32 weights; rows that fall outside the source sum to less than 1
        (zero padding).
    """
    u = torch.arange(n_out, device=lo.device, dtype=torch.float32)
    x = torch.arange(n_in, device=lo.device, dtype=torch.float32)
    start = lo[:, None] + u[None, :] / scale[:, None]  # (N, n_out)
    stop = start + 1.0 / scale[:, None]
    overlap = torch.minimum(stop[:, :, None], x[None, None, :] + 1).sub_(
        torch.maximum(start[:, :, None], x[None, None, :])
    )  # (N, n_out, n_in)
    # Negative = no overlap; also snap float round-off (~1e-7 pixel) to zero so edges stay crisp.
    overlap.masked_fill_(overlap < 1e-5, 0.0)
    return overlap.mul_(scale[:, None, None])


def _first_true(mask: Tensor) -> Tensor:
    """(N, L) bool -> (N,) index of the first True (0 for an all-False row)."""
    return mask.to(torch.uint8).argmax(dim=1)


def mnist_frame(images_uint8: Tensor, size: int = MODEL_SIZE, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Frame digits as MNIST is framed: bounding box into 20x20, centre of mass at the centre.

    Every image is reframed, whatever its size (use :func:`frame_images` for the pass-through of
    images that already have the model's size). Vectorised: one pair of batched matrix products
    per chunk of images, no per-image Python.

    Args:
        images_uint8: (N, H, W) uint8, ink bright on a dark background.
        size: output canvas height and width; the digit box is ``round(size * 20 / 28)``.
        threshold: pixels above ``threshold * the image's peak`` define the bounding box, so that
            the faint anti-aliasing halo of USPS digits does not count as the digit. The halo itself
            is kept (it lands just outside the box), as are the weights for the centre of mass.

    Returns:
        (N, 1, size, size) float32 in [0, 1]. A blank image stays blank. A digit whose centre of
        mass is far off its box centre can be clipped at the canvas edge, as in MNIST itself.
    """
    box = round(size * MNIST_BOX / MODEL_SIZE)
    out = torch.empty(len(images_uint8), 1, size, size, device=images_uint8.device)
    step = _chunk(images_uint8, size)
    for start in range(0, len(images_uint8), step):
        chunk = images_uint8[start : start + step]
        out[start : start + step] = _mnist_frame_chunk(_as_float(chunk)[:, 0], size, box, threshold)
    return out


def _mnist_frame_chunk(x: Tensor, size: int, box: int, threshold: float) -> Tensor:
    """(N, H, W) float in [0, 1] -> (N, 1, size, size), see :func:`mnist_frame`."""
    _, h, w = x.shape
    peak = x.amax(dim=(1, 2))  # (N,)
    ink = (x > (threshold * peak)[:, None, None]) & (x > 0)  # (N, H, W)
    rows, cols = ink.any(dim=2), ink.any(dim=1)  # (N, H), (N, W)
    top, left = _first_true(rows), _first_true(cols)
    bottom, right = h - _first_true(rows.flip(1)), w - _first_true(cols.flip(1))  # exclusive
    blank = ~rows.any(dim=1)
    extent = torch.maximum(bottom - top, right - left).clamp_(min=1).to(torch.float32)
    scale = torch.where(blank, torch.ones_like(extent), box / extent)  # output px per source px

    # Centre of mass in continuous source coordinates (pixel i covers [i, i + 1), centre i + 0.5).
    mass = x.sum(dim=(1, 2)).clamp_(min=1e-12)
    ys = torch.arange(h, device=x.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=x.device, dtype=torch.float32) + 0.5
    com_y = torch.where(blank, torch.full_like(mass, h / 2), (x.sum(2) * ys).sum(1) / mass)
    com_x = torch.where(blank, torch.full_like(mass, w / 2), (x.sum(1) * xs).sum(1) / mass)

    # LeCun's recipe, vectorised. The bbox's longer side spans exactly pixels [m, m + box) of the
    # canvas (m = (size - box) // 2), the shorter side is centred in the box; then the whole image
    # moves by a whole number of pixels so that its centre of mass falls within half a pixel of the
    # middle of pixel (size // 2, size // 2). That is MNIST's own statistic (test set: mean (13.99,
    # 14.01), std 0.29, i.e. rounded to whole pixels): a sub-pixel shift would blur the digit, and
    # MNIST itself is reproduced exactly (its 20-pixel box, scale 1, whole-pixel shifts).
    margin = (size - box) // 2
    top_out = margin + (box - (bottom - top) * scale) / 2  # canvas coordinate of the bbox's top
    left_out = margin + (box - (right - left) * scale) / 2
    lo_y = top - top_out / scale  # source coordinate of the canvas's top edge
    lo_x = left - left_out / scale
    # Area resampling preserves the continuous centre of mass: it lands at (com - lo) * scale.
    target = size // 2 + 0.5
    lo_y = lo_y - torch.round(target - (com_y - lo_y) * scale) / scale
    lo_x = lo_x - torch.round(target - (com_x - lo_x) * scale) / scale
    wy = _area_weights(lo_y, scale, h, size)  # (N, size, H)
    wx = _area_weights(lo_x, scale, w, size)  # (N, size, W)
    out = wy @ x @ wx.transpose(1, 2)  # (N, size, H) @ (N, H, W) @ (N, W, size)
    return out.clamp_(0.0, 1.0).unsqueeze(1)


class LabeledImages(Protocol):
    """What :func:`model_inputs` reads of a dataset (``digitflow.data.cache.DigitDataset``, named by its
    shape only: the data layer's readers import this module, and the cache imports them)."""

    images: Tensor
    labels: Tensor


Preprocessor = Callable[[Tensor, int], Tensor]

PREPROCESSORS: dict[str, Preprocessor] = {
    "mnist-frame": mnist_frame,
    "resize": resize,
}
"""``DataConfig.target_preprocess`` name -> ``fn(images_uint8 (N, H, W), size)``.

Each returns (N, 1, size, size) float32 in [0, 1] and applies to images of any size (``resize`` of
a model-sized image is the identity, ``mnist-frame`` reframes it); :func:`frame_images` adds the
pass-through of model-sized images.
"""


def get_preprocessor(mode: str) -> Preprocessor:
    """The preprocessing function named ``mode``; :class:`ConfigError` listing the valid names."""
    try:
        return PREPROCESSORS[mode]
    except KeyError:
        valid = ", ".join(sorted(PREPROCESSORS))
        raise ConfigError(f"unknown target preprocessing {mode!r}; valid modes: {valid}") from None


def frame_images(images_uint8: Tensor, mode: str, size: int = MODEL_SIZE) -> Tensor:
    """Any dataset's uint8 images as model input, framed with the preprocessing named ``mode``.

    Images that are already ``size`` x ``size`` pass through unchanged (``/ 255``) in every mode:
    they are taken to be MNIST-framed already. Other sizes (USPS's 16x16, as a training source or
    as a target) go through ``PREPROCESSORS[mode]``. The mode is validated even when unused, so a
    typo fails on MNIST too.

    Args:
        images_uint8: (N, H, W) uint8, on any device (the work happens there).
        mode: a key of :data:`PREPROCESSORS`, e.g. ``"mnist-frame"`` or ``"resize"``.
        size: the model's input height and width.

    Returns:
        (N, 1, size, size) float32 in [0, 1].

    Raises:
        ConfigError: ``mode`` is not a known preprocessing.
    """
    preprocess = get_preprocessor(mode)
    if tuple(images_uint8.shape[-2:]) == (size, size):
        return to_model_input(images_uint8, input_shape=(1, size, size))
    return preprocess(images_uint8, size)


def check_model_input(images: Tensor, input_shape: tuple[int, int, int] = (1, MODEL_SIZE, MODEL_SIZE)) -> None:
    """Raise :class:`ConfigError` unless ``images`` fit a model that takes ``input_shape``.

    Args:
        images: (N, H, W) or (N, C, H, W), any dtype.
        input_shape: the model's (C, H, W), e.g. ``LeNet.input_shape``.

    Raises:
        ConfigError: one line naming the sizes and the fix (``--target-preprocess``).
    """
    channels, height, width = input_shape
    if images.dim() not in (3, 4):
        raise ConfigError(
            f"images have shape {tuple(images.shape)} but the model takes (N, {channels}, {height}, {width})"
        )
    if images.dim() == 4 and images.shape[1] != channels:
        raise ConfigError(f"images have {images.shape[1]} channels but the model takes {channels}")
    h, w = images.shape[-2:]
    if (h, w) != (height, width):
        modes = " or ".join(PREPROCESSORS)
        raise ConfigError(f"images are {h}x{w} but the model takes {height}x{width}; use --target-preprocess {modes}")


def to_model_input(images_uint8: Tensor, input_shape: tuple[int, int, int] = (1, MODEL_SIZE, MODEL_SIZE)) -> Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1]: the plain path for MNIST-sized data.

    Raises:
        ConfigError: the images are not the model's size (see :func:`check_model_input`).
    """
    check_model_input(images_uint8, input_shape)
    return _as_float(images_uint8)


def model_inputs(dataset: LabeledImages, preprocess: str, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """A dataset's images as the model takes them, float (N, 1, 28, 28) in [0, 1] (``preprocess``: see
    :func:`frame_images`), and its labels, both on ``device``."""
    images = frame_images(dataset.images.to(device), preprocess)
    return images, dataset.labels.to(device)

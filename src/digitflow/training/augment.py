"""Batched training augmentation, drawn independently for every image, on the training device.

:func:`build_augment` turns an :class:`~digitflow.config.AugmentConfig` into a callable that takes a
batch already on the device, float (N, C, H, W) in [0, 1], and returns a batch of the same shape
and range. The geometric part (random affine + elastic distortion) is one sampling grid and one
``F.grid_sample`` call for the whole batch: no per-sample PIL work, no Python loop over images. The
optional ``extra`` torchvision transforms run image by image afterwards.

Randomness comes from torch's global generator for the batch's device (``torch.manual_seed`` seeds
it, CUDA included), so the training engine's per-epoch reseeding makes augmentation reproducible.
``extra`` transforms draw from the CPU generator, as torchvision does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from digitflow.config import AugmentConfig
from digitflow.errors import ConfigError

AugmentFn = Callable[[Tensor], Tensor]


def build_augment(config: AugmentConfig) -> AugmentFn | None:
    """The batch augmentation described by ``config``, or None when nothing is enabled.

    Args:
        config: which parts are on (``affine``, ``elastic``, ``extra``) and their magnitudes.

    Returns:
        ``fn(images (N, C, H, W) float in [0, 1]) -> same shape, in [0, 1]``, drawing every image's
        parameters independently from the global torch RNG of the images' device; or None.

    Raises:
        ConfigError: an ``extra`` name that is not a ``torchvision.transforms.v2`` class usable with
            its default arguments on a grayscale float image, or inconsistent magnitudes.
    """
    if not (config.affine or config.elastic or config.hflip or config.extra):
        return None
    return BatchAugment(config)


class BatchAugment:
    """Random affine + elastic distortion as one ``grid_sample``, then optional torchvision extras.

    Affine, per image: rotation uniform in +/-``degrees``; translation uniform in +/-``translate``
    times the width (x) and height (y), sub-pixel; scale uniform in [``scale_min``, ``scale_max``];
    shear parallel to the x axis uniform in +/-``shear`` degrees (as torchvision's ``RandomAffine``
    with a single shear value), all about the image centre.

    Elastic, per image (Simard et al. 2003, as torchvision's ``ElasticTransform``): uniform noise in
    [-1, 1] for dx and dy, smoothed by a Gaussian of std ``elastic_sigma`` pixels (kernel size
    ``int(8 * sigma + 1)`` made odd, reflect padding), times ``elastic_alpha`` *pixels*. torchvision
    scales by ``alpha / width`` in [-1, 1] grid units, i.e. ``alpha / 2`` pixels: its ``alpha=68``
    is our ``elastic_alpha=34``. The displacement is applied in output coordinates, after the affine
    warp (the grid samples ``affine(p + displacement(p))``).

    Horizontal flip (``hflip``), per image with probability 1/2, after the geometric warp.

    Bilinear sampling with zeros padding keeps values in [0, 1]; the output is clamped anyway
    because ``extra`` transforms need not.
    """

    def __init__(self, config: AugmentConfig) -> None:
        if config.affine and not 0 < config.scale_min <= config.scale_max:
            raise ConfigError(
                f"augment scale range [{config.scale_min}, {config.scale_max}] is invalid; "
                "need 0 < scale_min <= scale_max"
            )
        if config.elastic and (config.elastic_alpha < 0 or config.elastic_sigma < 0):
            raise ConfigError("augment elastic_alpha and elastic_sigma must be >= 0")
        self.config = config
        self.extra = _build_extra(config.extra)
        # (H, W, device, dtype) -> base grid / blur matrices: built once, reused every batch.
        self._cache: dict[tuple[int, int, str, torch.dtype], tuple[Tensor, Tensor | None, Tensor | None]] = {}

    def __repr__(self) -> str:
        return f"BatchAugment({self.config!r})"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Augment ``images`` (N, C, H, W) float in [0, 1]; a new tensor of the same shape."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        out = images
        if (self.config.affine or self.config.elastic) and images.shape[0] > 0:
            grid = self._grid(images)
            out = F.grid_sample(images, grid, "bilinear", padding_mode="zeros", align_corners=False)
        if self.config.hflip:
            flip = torch.rand(out.shape[0], device=out.device) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        if self.extra is not None:
            # torchvision transforms draw one set of parameters per call: loop to draw per image.
            out = torch.stack([self.extra(image) for image in out]) if len(out) else out
        return out.clamp(0.0, 1.0)

    def _grid(self, images: Tensor) -> Tensor:
        """The (N, H, W, 2) sampling grid, in ``grid_sample``'s [-1, 1] units, x first."""
        n, _, h, w = images.shape
        device, dtype = images.device, images.dtype
        base, blur_h, blur_w = self._constants(h, w, device, dtype)
        cfg = self.config

        theta = self._affine(n, h, w, device, dtype) if cfg.affine else None  # (N, 2, 3)
        if not (cfg.elastic and cfg.elastic_alpha > 0):
            if theta is None:
                return base.expand(n, h, w, 2)
            return F.affine_grid(theta, [n, 1, h, w], align_corners=False)

        # Smoothed uniform noise, (N, 2, H, W): blur_h @ noise @ blur_w^T is the separable Gaussian
        # blur with reflect padding, as two small batched matmuls.
        noise = torch.rand(n, 2, h, w, device=device, dtype=dtype).mul_(2).sub_(1)
        if blur_h is not None and blur_w is not None:  # built together (_constants)
            noise = blur_h @ noise @ blur_w.T
        # Pixels -> grid units: a pixel is 2/W wide in x and 2/H tall in y. Python scalars, not a tensor
        # built here: a host-to-device copy would break a CUDA-graph capture of the training step.
        dx, dy = noise[:, 0] * (cfg.elastic_alpha * 2.0 / w), noise[:, 1] * (cfg.elastic_alpha * 2.0 / h)
        displacement = torch.stack([dx, dy], dim=-1)  # (N, H, W, 2)
        grid = base + displacement
        if theta is None:
            return grid
        # grid_in = theta[:, :, :2] @ (p + d) + theta[:, :, 2], for every output pixel p.
        grid = torch.einsum("nhwj,nij->nhwi", grid, theta[:, :, :2])
        return grid + theta[:, None, None, :, 2]

    def _affine(self, n: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Per-image inverse affine maps (output -> input) in grid units, (N, 2, 3)."""
        cfg = self.config
        u = torch.rand(n, 5, device=device, dtype=torch.float32)  # one RNG call for all parameters
        angle = (u[:, 0] * 2 - 1) * math.radians(cfg.degrees)
        tx = (u[:, 1] * 2 - 1) * cfg.translate * w  # pixels
        ty = (u[:, 2] * 2 - 1) * cfg.translate * h
        scale = cfg.scale_min + u[:, 3] * (cfg.scale_max - cfg.scale_min)
        shear = torch.tan((u[:, 4] * 2 - 1) * math.radians(cfg.shear))

        # Forward map about the centre, in pixels: p_out = scale * R(angle) @ Shear @ p_in + t.
        # Inverse: p_in = Shear^-1 @ R(-angle) @ (p_out - t) / scale, Shear^-1 = [[1, s], [0, 1]].
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = cos + shear * (-sin), sin + shear * cos  # row 0 of Shear^-1 @ R(-angle)
        c, d = -sin, cos  # row 1
        inv = torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)  # (N, 2, 2)
        inv = inv / scale[:, None, None]
        # Pixels -> grid units (x * 2/W, y * 2/H): conjugate the linear part, convert t.
        inv[:, 0, 1] *= h / w
        inv[:, 1, 0] *= w / h
        t = torch.stack([tx * 2 / w, ty * 2 / h], -1)  # (N, 2)
        offset = -(inv @ t[:, :, None])  # (N, 2, 1): p_in = inv @ p_out - inv @ t
        return torch.cat([inv, offset], dim=2).to(dtype)

    def _constants(
        self, h: int, w: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            # Identity grid at pixel centres, (1, H, W, 2): what affine_grid gives for the identity.
            ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
            xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
            base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)
            blur_h = blur_w = None
            if self.config.elastic and self.config.elastic_sigma > 0:
                blur_h = _blur_matrix(h, self.config.elastic_sigma, device, dtype)
                blur_w = _blur_matrix(w, self.config.elastic_sigma, device, dtype)
            self._cache[key] = (base, blur_h, blur_w)
        return self._cache[key]


def _blur_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n, n) matrix B such that ``B @ v`` is the 1-D Gaussian blur of ``v`` with reflect padding.

    Same kernel as torchvision's ``gaussian_blur`` (size ``int(8 * sigma + 1)`` made odd). The
    reflection is folded as often as needed, so kernels wider than the image are fine (torchvision
    would raise there).
    """
    size = int(8 * sigma + 1)
    size += 1 - size % 2
    half = (size - 1) // 2
    x = torch.linspace(-half, half, size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    rows = torch.arange(n)[:, None].expand(n, size)
    cols = rows + torch.arange(-half, half + 1)[None, :]  # source index of each tap, may be outside
    if n > 1:
        period = 2 * (n - 1)  # reflect, edge not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        cols = cols % period
        cols = torch.where(cols >= n, period - cols, cols)
    else:
        cols = torch.zeros_like(cols)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), kernel.repeat(n), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def _build_extra(names: tuple[str, ...]) -> Callable[[Tensor], Tensor] | None:
    """One per-image transform composed of the named ``torchvision.transforms.v2`` classes."""
    if not names:
        return None
    from torchvision.transforms import v2  # imported only when asked for: it is slow to import

    transforms = []
    for name in names:
        cls = getattr(v2, name, None)
        if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
            raise ConfigError(
                f"unknown augmentation {name!r}; extra takes torchvision.transforms.v2 classes "
                f"that work with their defaults: {', '.join(_usable_extras())}"
            )
        try:
            transform = cls()
        except TypeError:
            raise ConfigError(
                f"augmentation {name!r} needs arguments; extra takes torchvision.transforms.v2 "
                f"classes that work with their defaults: {', '.join(_usable_extras())}"
            ) from None
        reason = _probe(transform)
        if reason is not None:
            raise ConfigError(
                f"augmentation {name!r} does not work on a grayscale float image "
                f"({reason}); usable: {', '.join(_usable_extras())}"
            )
        transforms.append(transform)
    composed: Callable[[Tensor], Tensor] = transforms[0] if len(transforms) == 1 else v2.Compose(transforms)
    return composed


def _probe(transform: Callable[[Tensor], Tensor]) -> str | None:
    """Run ``transform`` on a (1, 28, 28) float image a few times, without touching the global RNG.

    Returns None when it works and keeps the shape every time, else a short reason. Several draws
    (from a fixed seed, so the verdict is reproducible) catch transforms that only sometimes change
    the shape, such as ``RandomZoomOut``.
    """
    image = torch.linspace(0, 1, 28 * 28).reshape(1, 28, 28)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(8):
            try:
                out = transform(image)
            except Exception as error:  # noqa: BLE001 - any failure means "not usable"; the reason is reported
                reason = str(error).splitlines()[0] if str(error) else ""
                return f"{type(error).__name__}: {reason}".rstrip(": ")
            same_kind = isinstance(out, Tensor) and out.is_floating_point()
            if not (same_kind and out.shape == image.shape):
                return "it changes the image's shape or type"
    return None


def _usable_extras() -> list[str]:
    """The hint for error messages: ``torchvision.transforms.v2`` augmentations (conversions and
    no-ops left out) that build with their defaults and work on a grayscale float image."""
    from torchvision.transforms import v2

    usable = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated classes (ToTensor) warn when built
        for name in sorted(dir(v2)):
            cls = getattr(v2, name)
            if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
                continue
            if name.startswith(("_", "To", "Convert", "Clamp", "PIL")) or name == "Identity":
                continue
            try:
                transform = cls()
            except Exception:  # noqa: BLE001 - needs arguments
                continue
            if _probe(transform) is None:
                usable.append(name)
    return usable

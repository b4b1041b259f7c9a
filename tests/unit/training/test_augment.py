"""Batched augmentation: shapes and ranges, per-image draws, reproducibility, identity, errors."""

import dataclasses
import time

import pytest
import torch

from digitflow.config import AugmentConfig
from digitflow.errors import ConfigError
from digitflow.training.augment import AugmentFn, _blur_matrix, build_augment

# Every magnitude zero; the parts (affine, elastic) are the defaults until a test replaces them.
STILL = AugmentConfig(degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, shear=0.0, elastic_alpha=0.0)
# Each part spelled out, so that these tests do not follow the tuned defaults (elastic is off by default).
BOTH = AugmentConfig(affine=True, elastic=True)
AFFINE = AugmentConfig(affine=True, elastic=False)
ELASTIC = AugmentConfig(affine=False, elastic=True)


def _digits(n: int = 8, size: int = 28) -> torch.Tensor:
    """(n, 1, size, size) float in [0, 1]: random strokes in the middle, as a digit batch."""
    gen = torch.Generator().manual_seed(1)
    images = torch.zeros(n, 1, size, size)
    images[:, :, size // 4 : -size // 4, size // 4 : -size // 4] = torch.rand(
        n, 1, size - 2 * (size // 4), size - 2 * (size // 4), generator=gen
    )
    return images


def _augment(config: AugmentConfig) -> AugmentFn:
    """build_augment for a config that enables something, so it never answers None."""
    augment = build_augment(config)
    assert augment is not None
    return augment


def test_nothing_enabled_gives_none():
    assert build_augment(AugmentConfig(affine=False, elastic=False)) is None
    assert build_augment(AugmentConfig(affine=False, elastic=False, extra=("RandomErasing",))) is not None


@pytest.mark.parametrize(
    "config",
    [BOTH, AFFINE, ELASTIC, AugmentConfig()],
    ids=["affine+elastic", "affine", "elastic", "defaults"],
)
def test_shape_dtype_and_range_are_kept(config):
    images = _digits(16)
    out = _augment(config)(images)
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert not torch.equal(out, images)


def test_non_square_and_small_images():
    # 16x16 with sigma 4: the blur kernel (33 taps) is wider than the image; reflection folds.
    augment = _augment(AugmentConfig(elastic=True, elastic_sigma=4.0))
    for shape in [(4, 1, 16, 16), (4, 1, 20, 32), (4, 3, 28, 28)]:
        out = augment(torch.rand(shape))
        assert out.shape == shape
        assert float(out.min()) >= 0.0
        assert float(out.max()) <= 1.0


def test_every_image_draws_its_own_parameters():
    image = _digits(1)
    batch = image.expand(4, -1, -1, -1).clone()  # four copies of one image
    for config in [BOTH, AFFINE, ELASTIC]:
        out = _augment(config)(batch)
        for i in range(1, 4):
            assert not torch.allclose(out[0], out[i])


def test_same_seed_same_augmentation():
    images = _digits(8)
    augment = _augment(dataclasses.replace(BOTH, extra=("RandomErasing",)))
    torch.manual_seed(7)
    first = augment(images)
    torch.manual_seed(7)
    second = augment(images)
    torch.manual_seed(8)
    third = augment(images)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_building_does_not_consume_the_global_rng():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_augment(dataclasses.replace(BOTH, extra=("RandomErasing", "RandomInvert")))  # probes the extras
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    "parts",
    [dict(affine=True, elastic=True), dict(affine=True, elastic=False), dict(affine=False, elastic=True)],
    ids=["affine+elastic", "affine", "elastic"],
)
def test_zero_magnitudes_are_the_identity(parts):
    images = _digits(8)
    out = _augment(dataclasses.replace(STILL, **parts))(images)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_affine_geometry_scale_about_the_centre():
    # Scale 0.5 exactly: a white frame shrinks to the central quarter of its area.
    config = dataclasses.replace(STILL, scale_min=0.5, scale_max=0.5, elastic=False)
    out = _augment(config)(torch.ones(2, 1, 28, 28))
    assert float(out.sum()) == pytest.approx(2 * 14 * 14, rel=0.03)
    assert float(out[:, :, 7:21, 7:21].min()) == pytest.approx(1.0)
    assert float(out[:, :, :6].max()) == 0.0
    assert float(out[:, :, :, 22:].max()) == 0.0


def test_affine_geometry_translation_is_bounded():
    # translate 0.1 of 28 pixels: a single dot moves by at most 2.8 pixels in each direction.
    image = torch.zeros(64, 1, 28, 28)
    image[:, :, 14, 14] = 1.0
    out = _augment(dataclasses.replace(STILL, translate=0.1, elastic=False))(image)
    idx = torch.arange(28.0)
    mass = out.sum(dim=(1, 2, 3))
    com_y = (out.sum(dim=(1, 3)) * idx).sum(1) / mass
    com_x = (out.sum(dim=(1, 2)) * idx).sum(1) / mass
    assert float((com_y - 14).abs().max()) <= 2.81
    assert float((com_x - 14).abs().max()) <= 2.81
    assert float((com_x - 14).abs().max()) > 1.0  # it does move


def test_blur_matrix_matches_torchvision_gaussian_blur():
    from torchvision.transforms.v2 import functional as TF

    noise = torch.rand(1, 1, 28, 28)
    blur = _blur_matrix(28, 4.0, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(blur @ noise[0, 0] @ blur.T, TF.gaussian_blur(noise, [33, 33], [4.0, 4.0])[0, 0])
    assert torch.allclose(_blur_matrix(5, 4.0, torch.device("cpu"), torch.float32).sum(1), torch.ones(5))


def test_extra_transforms_apply_per_image():
    images = torch.ones(32, 1, 28, 28)
    out = _augment(AugmentConfig(affine=False, elastic=False, extra=("RandomErasing",)))(images)
    erased = (out == 0).flatten(1).any(1)
    assert 0 < int(erased.sum()) < 32  # p=0.5 per image, not per batch


@pytest.mark.parametrize("name", ["NoSuchTransform", "GaussianBlur", "Compose", "RandomZoomOut"])
def test_unusable_extra_is_a_config_error(name):
    with pytest.raises(ConfigError) as info:
        build_augment(AugmentConfig(extra=(name,)))
    message = str(info.value)
    assert repr(name) in message
    assert "RandomErasing" in message
    assert "\n" not in message


def test_bad_scale_range_is_a_config_error():
    with pytest.raises(ConfigError, match="scale"):
        build_augment(AugmentConfig(scale_min=1.2, scale_max=0.9))


def test_a_training_batch_costs_milliseconds():
    augment = _augment(BOTH)  # every geometric part on: the costliest built-in path
    images = _digits(64)
    augment(images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: timings stay meaningful when other jobs share the cores
    try:
        start = time.perf_counter()
        for _ in range(20):
            augment(images)
        elapsed = (time.perf_counter() - start) / 20
    finally:
        torch.set_num_threads(threads)
    assert elapsed < 0.05  # ~1-3 ms per batch of 64; generous for loaded CI machines


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_images_device_reproducibly():
    images = _digits(8).cuda()
    augment = _augment(BOTH)
    torch.manual_seed(0)
    first = augment(images)
    torch.manual_seed(0)
    assert first.device == images.device
    assert torch.equal(first, augment(images))


def test_hflip_mirrors_about_half_the_images_each_exactly():
    images = torch.rand(400, 1, 28, 28)
    augment = build_augment(AugmentConfig(affine=False, hflip=True))
    assert augment is not None
    torch.manual_seed(0)
    out = augment(images)
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=False)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=False)])
    assert bool((mirrored ^ kept).all())  # each image is either itself or its mirror image, untouched otherwise
    assert 150 < int(mirrored.sum()) < 250
    torch.manual_seed(0)
    assert torch.equal(augment(images), out)


def test_hflip_after_the_affine_warp():
    images = _digits(64)
    torch.manual_seed(5)
    warped = _augment(AFFINE)(images)
    torch.manual_seed(5)
    both = _augment(dataclasses.replace(AFFINE, hflip=True))(images)
    flipped = [torch.equal(b, w.flip(-1)) for b, w in zip(both, warped, strict=False)]
    assert all(f or torch.equal(b, w) for f, b, w in zip(flipped, both, warped, strict=False))
    assert any(flipped)

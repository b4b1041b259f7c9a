"""Target preprocessing: shapes, ranges, MNIST-style framing geometry, pass-through, errors."""

import time

import pytest
import torch

from digitflow.data.framing import (
    PREPROCESSORS,
    check_model_input,
    frame_images,
    mnist_frame,
    resize,
    to_model_input,
)
from digitflow.errors import ConfigError


def _ink_bbox(image: torch.Tensor) -> tuple[int, int, int, int]:
    """(H, W) -> (top, bottom, left, right) of the nonzero pixels, bottom/right inclusive."""
    rows = image.gt(0).any(dim=1).nonzero()[:, 0]
    cols = image.gt(0).any(dim=0).nonzero()[:, 0]
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(H, W) -> (row, col) centre of mass in pixel-index coordinates."""
    idx_y = torch.arange(image.shape[0], dtype=torch.float32)
    idx_x = torch.arange(image.shape[1], dtype=torch.float32)
    mass = image.sum()
    return float((image.sum(1) * idx_y).sum() / mass), float((image.sum(0) * idx_x).sum() / mass)


def _usps_like(n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, 16, 16) uint8 digits that touch all four edges of the frame, as USPS digits do."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 16, 16), generator=gen, dtype=torch.uint8)
    images[:, 4:12, 4:12] = 0  # a hole, so the digit is not a plain square
    return images


def _ring(size: int = 16) -> torch.Tensor:
    """(1, size, size) uint8: a symmetric full-frame 'zero' (a square ring, 3 pixels thick)."""
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    image[:, :, :] = 255
    image[:, 3:-3, 3:-3] = 0
    return image


@pytest.mark.parametrize("mode", sorted(PREPROCESSORS))
@pytest.mark.parametrize("shape", [(5, 16, 16), (3, 28, 28), (2, 40, 33)])
def test_every_mode_gives_model_input(mode, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = frame_images(images, mode)
    assert out.shape == (shape[0], 1, 28, 28)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


def test_mnist_frame_fits_a_full_frame_digit_into_the_central_20x20():
    out = frame_images(_ring(), "mnist-frame")[0, 0]
    top, bottom, left, right = _ink_bbox(out)
    assert bottom - top + 1 <= 20
    assert right - left + 1 <= 20
    assert top >= 4  # the central 20x20
    assert bottom <= 23
    assert left >= 4
    assert right <= 23
    com_y, com_x = _centre_of_mass(out)
    assert abs(com_y - 13.5) <= 1.0
    assert abs(com_x - 13.5) <= 1.0


def test_mnist_frame_keeps_the_aspect_ratio():
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[0, :, 4:12] = 200  # 16 tall, 8 wide
    out = mnist_frame(image)[0, 0]
    top, bottom, left, right = _ink_bbox(out)
    assert bottom - top + 1 == 20
    assert right - left + 1 == 10
    assert out.sum() == pytest.approx(20 * 10 * 200 / 255, rel=1e-4)  # area resampling keeps ink


def test_mnist_frame_centres_by_centre_of_mass_not_by_box():
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[0, :, :] = 30
    image[0, :, 12:] = 255  # heavy right edge: the centre of mass is right of the box centre
    out = mnist_frame(image)[0, 0]
    com_y, com_x = _centre_of_mass(out)
    assert abs(com_y - 14.0) <= 0.5  # within half a pixel of (14, 14)
    assert abs(com_x - 14.0) <= 0.5


def test_mnist_frame_of_real_usps_like_digits_centres_them():
    out = mnist_frame(_usps_like(8))
    for image in out[:, 0]:
        top, bottom, left, right = _ink_bbox(image)
        assert bottom - top + 1 <= 21  # 20 + the faint halo's fraction
        assert right - left + 1 <= 21
        com_y, com_x = _centre_of_mass(image)
        assert abs(com_y - 14.0) <= 0.5
        assert abs(com_x - 14.0) <= 0.5


def test_mnist_frame_downscales_large_images():
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    image[0, 8:56, 20:40] = 255  # 48 x 20 box
    out = mnist_frame(image)[0, 0]
    top, bottom, left, right = _ink_bbox(out)
    assert bottom - top + 1 == 20
    assert 8 <= right - left + 1 <= 10  # 20 * 20 / 48 = 8.3, spread over partially covered pixels


def test_mnist_frame_is_exact_on_mnist_framed_digits():
    # An L, 4 pixels thick, filling the 16x16 frame: scaled by 20/16 its edges land on pixel
    # boundaries, so the framed digit is crisp, and reframing it (28x28, 20-pixel box, centre of
    # mass already within half a pixel of (14, 14)) must give it back exactly: MNIST is a fixed point.
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[0, :, :4] = 255
    image[0, 12:, :] = 255
    framed = mnist_frame(image)
    top, bottom, left, right = _ink_bbox(framed[0, 0])
    assert (bottom - top + 1, right - left + 1) == (20, 20)
    crisp = (framed - framed.round()).abs()
    assert float(crisp.max()) < 1e-5  # only 0s and 1s, up to float round-off
    as_uint8 = (framed[:, 0] * 255).round().to(torch.uint8)
    torch.testing.assert_close(mnist_frame(as_uint8), framed, atol=1e-5, rtol=0)


def test_blank_images_stay_blank():
    blank = torch.zeros(3, 16, 16, dtype=torch.uint8)
    for mode in PREPROCESSORS:
        out = frame_images(blank, mode)
        assert out.shape == (3, 1, 28, 28)
        assert not out.isnan().any()
        assert float(out.abs().sum()) == 0.0


def test_empty_batches():
    for mode in PREPROCESSORS:
        assert frame_images(torch.zeros(0, 16, 16, dtype=torch.uint8), mode).shape == (0, 1, 28, 28)


def test_resize_fills_the_frame():
    out = frame_images(_ring(), "resize")[0, 0]
    assert _ink_bbox(out) == (0, 27, 0, 27)
    assert float(out[0].min()) > 0.9
    assert float(out[14, 14]) == 0.0


@pytest.mark.parametrize("mode", sorted(PREPROCESSORS))
def test_model_sized_images_pass_through_unchanged(mode):
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    assert torch.equal(frame_images(images, mode), images.unsqueeze(1).float() / 255)
    assert torch.equal(resize(images), images.unsqueeze(1).float() / 255)


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        frame_images(torch.zeros(1, 28, 28, dtype=torch.uint8), "stretch")
    message = str(info.value)
    assert "'stretch'" in message
    assert "mnist-frame" in message
    assert "resize" in message
    assert "\n" not in message


def test_model_input_size_is_checked_with_a_hint():
    with pytest.raises(ConfigError) as info:
        to_model_input(torch.zeros(2, 16, 16, dtype=torch.uint8))
    message = str(info.value)
    assert "16x16" in message
    assert "28x28" in message
    assert "--target-preprocess" in message
    with pytest.raises(ConfigError, match="channels"):
        check_model_input(torch.zeros(2, 3, 28, 28))
    check_model_input(torch.zeros(2, 1, 28, 28))
    out = to_model_input(torch.full((2, 28, 28), 255, dtype=torch.uint8))
    assert out.shape == (2, 1, 28, 28)
    assert out.dtype == torch.float32
    assert float(out.min()) == 1.0


def test_framing_ten_thousand_images_is_fast():
    images = _usps_like(10_000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: timings stay meaningful when other jobs share the cores
    try:
        for mode in PREPROCESSORS:
            start = time.perf_counter()
            frame_images(images, mode)
            assert time.perf_counter() - start < 3.0  # ~0.05-0.2 s
    finally:
        torch.set_num_threads(threads)

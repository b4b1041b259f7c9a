"""IDX and USPS LIBSVM parsing: round trips, torchvision parity, and one-line errors on bad input."""

import bz2
import gzip

import numpy as np
import pytest
import torch
import torchvision

from digitflow.data.formats import read_idx, read_idx_images, read_idx_labels, read_usps
from digitflow.errors import DataError
from tests.fakedata import fake_digits, idx_bytes, usps_text, write_idx, write_usps


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_images_and_labels_round_trip(tmp_path, suffix):
    images, labels = fake_digits(12, (28, 28))
    img_path = write_idx(tmp_path / f"images{suffix}", images)
    lbl_path = write_idx(tmp_path / f"labels{suffix}", labels.astype(np.uint8))
    got_images, got_labels = read_idx_images(img_path), read_idx_labels(lbl_path)
    assert got_images.dtype == torch.uint8
    assert got_images.shape == (12, 28, 28)
    assert got_labels.dtype == torch.int64
    assert got_labels.shape == (12,)
    assert torch.equal(got_images, torch.from_numpy(images))
    assert torch.equal(got_labels, torch.from_numpy(labels))


def test_compression_is_detected_by_content_not_name(tmp_path):
    path = tmp_path / "plain-name"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(6, dtype=np.uint8))))
    assert read_idx(path).tolist() == list(range(6))


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", fake_digits(10)[0])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as excinfo:
        read_idx_images(path)
    assert str(path) in one_line(excinfo)
    assert "truncated" in str(excinfo.value)


def test_idx_shorter_than_header_says_is_truncated(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(fake_digits(10)[0])[:-5])
    with pytest.raises(DataError, match="truncated") as excinfo:
        read_idx(path)
    assert str(path) in one_line(excinfo)
    assert "(10, 28, 28)" in str(excinfo.value)


def test_idx_bad_magic_and_wrong_rank(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    labels = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="not an IDX image file"):
        read_idx_images(labels)
    with pytest.raises(DataError, match="not an IDX label file"):
        read_idx_labels(write_idx(tmp_path / "images", np.zeros((2, 3, 3), dtype=np.uint8)))


def test_usps_matches_torchvision_conversion(tmp_path):
    images, labels = fake_digits(25, (16, 16), seed=3)
    write_usps(tmp_path / "usps.t.bz2", images, labels)
    got_images, got_labels = read_usps(tmp_path / "usps.t.bz2")
    assert got_images.dtype == torch.uint8
    assert got_images.shape == (25, 16, 16)
    assert got_labels.dtype == torch.int64
    assert got_labels.tolist() == labels.tolist()
    reference = torchvision.datasets.USPS(str(tmp_path), train=False)  # reads the local file only
    assert np.array_equal(got_images.numpy(), reference.data)
    assert got_labels.tolist() == list(reference.targets)


def test_usps_extreme_values_map_to_0_and_255(tmp_path):
    line = "3 " + " ".join(f"{i}:{-1 if i % 2 else 1}" for i in range(1, 257)) + "\n"
    path = tmp_path / "usps"
    path.write_text(line)
    images, labels = read_usps(path)
    assert labels.tolist() == [2]
    assert images[0, 0, :2].tolist() == [0, 255]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("11 " + " ".join(f"{i}:0" for i in range(1, 257)), "label 11 outside 1..10"),
        ("1 " + " ".join(f"{i}:0" for i in range(1, 200)), "199 features, expected 256"),
        ("1 " + " ".join(f"{i}:0" for i in range(2, 258)), "malformed feature '2:0'"),
        ("1 " + " ".join(f"{i}:1.5" for i in range(1, 257)), r"in \[-1, 1\]"),
        ("x " + " ".join(f"{i}:0" for i in range(1, 257)), "label 'x' is not a number"),
    ],
)
def test_usps_malformed_lines(tmp_path, line, expected):
    path = tmp_path / "usps.bz2"
    path.write_bytes(bz2.compress(usps_text(*fake_digits(2, (16, 16))) + line.encode() + b"\n"))
    with pytest.raises(DataError, match=expected) as excinfo:
        read_usps(path)
    assert str(path) in one_line(excinfo)


def test_usps_truncated_bz2(tmp_path):
    path = write_usps(tmp_path / "usps.bz2", *fake_digits(20, (16, 16)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as excinfo:
        read_usps(path)
    assert str(path) in one_line(excinfo)

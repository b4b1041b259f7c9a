"""The real official files in ../shared/data (and Debian's Fashion-MNIST), where this machine has them."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.datasets.mnist import read_image_file, read_label_file

from digitflow.data import fetch, load_dataset

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def no_network(url, dest):
    raise AssertionError(f"tried to download {url}")


@pytest.fixture
def shared():
    if not (SHARED / "MNIST" / "raw").is_dir() or not (SHARED / "USPS").is_dir():
        pytest.skip(f"real data not available: {SHARED} is absent (see its README.md on other machines)")
    return SHARED


def test_mnist_test_tail_matches_torchvision(shared, tmp_path):
    ds = load_dataset("mnist:test[8000:]", shared, tmp_path / "cache", downloader=no_network)
    assert ds.images.shape == (2000, 28, 28)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.shape == (2000,)
    assert ds.labels.dtype == torch.int64
    # torchvision's own IDX reader on the decompressed official files gives the same tensors.
    raw = shared / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    assert torch.equal(ds.images, read_image_file(str(tmp_path / "t10k-images-idx3-ubyte"))[8000:])
    assert torch.equal(ds.labels, read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte"))[8000:].long())


def test_usps_test_matches_torchvision(shared, tmp_path):
    ds = load_dataset("usps:test", shared, tmp_path / "cache", offline=True)
    assert ds.images.shape == (2007, 16, 16)
    assert len(ds) == 2007
    reference = torchvision.datasets.USPS(str(shared / "USPS"), train=False)
    assert np.array_equal(ds.images.numpy(), reference.data)
    assert ds.labels.tolist() == list(reference.targets)


def test_recompressed_mnist_train_is_accepted_by_its_content(shared, tmp_path):
    # ../shared/data's training files were re-compressed: their .gz md5 is not torchvision's, their
    # decompressed content is the official one. Accepted without a download, and read as torchvision does.
    ds = load_dataset("mnist:train", shared, tmp_path / "cache", downloader=no_network)
    assert ds.images.shape == (60000, 28, 28)
    raw = shared / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    assert torch.equal(ds.images, read_image_file(str(tmp_path / "train-images-idx3-ubyte")))
    assert torch.equal(ds.labels, read_label_file(str(tmp_path / "train-labels-idx1-ubyte")).long())


def test_missing_mnist_train_offline_is_explained(shared, tmp_path):
    # A data dir with only the official test files: the training files are named, no download tried.
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(shared / "MNIST" / "raw" / name)
    with pytest.raises(Exception, match=r"mnist:train needs train-images-idx3-ubyte\.gz, train-labels"):
        fetch("mnist:train", tmp_path / "data", offline=True)


def test_debian_recompressed_fashion_mnist_is_accepted(tmp_path):
    source = DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz"
    if not source.is_file():
        pytest.skip(f"Debian's Fashion-MNIST is not installed ({DEBIAN_FASHION} absent)")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(DEBIAN_FASHION / name)
    ds = load_dataset("fashion-mnist:test[:10%]", tmp_path / "data", tmp_path / "cache", offline=True)
    assert ds.images.shape == (1000, 28, 28)
    assert ds.classes[0] == "T-shirt/top"

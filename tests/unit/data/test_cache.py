"""prepare/load: transform once into the cache dir, slice on load, stable digests, no re-parsing."""

import pickle
from pathlib import Path

import pytest
import torch

from digitflow.data import DigitDataset, PreparedDataset, load, load_dataset, prepare
from digitflow.data import cache as cache_mod
from digitflow.errors import DataError
from tests.fakedata import FAKE_SIZES, fake_data_dir, fake_split


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return fake_data_dir(tmp_path, monkeypatch), tmp_path / "cache"


def listing(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_prepare_record_and_load(dirs):
    data_dir, cache_dir = dirs
    before = listing(data_dir)
    prepared = prepare("mnist:test[10:30]", data_dir, cache_dir, offline=True)
    assert listing(data_dir) == before  # the data dir is only read
    assert isinstance(prepared, PreparedDataset)
    assert (prepared.spec, prepared.name, prepared.split) == ("mnist:test[10:30]", "mnist", "test")
    assert (prepared.start, prepared.stop, prepared.num_samples) == (10, 30, 20)
    assert (prepared.num_classes, prepared.image_size) == (10, (28, 28))
    assert prepared.cache_path.startswith(str(cache_dir))
    assert len(prepared.digest) == 64
    assert pickle.loads(pickle.dumps(prepared)) == prepared

    ds = load(prepared)
    assert isinstance(ds, DigitDataset)
    assert len(ds) == 20
    assert ds.images.dtype == torch.uint8
    assert ds.images.shape == (20, 28, 28)
    assert ds.labels.dtype == torch.int64
    assert ds.labels.shape == (20,)
    assert (ds.spec, ds.name, ds.digest, ds.num_classes) == (prepared.spec, "mnist", prepared.digest, 10)
    assert ds.classes[0] == "0 - zero"
    assert len(ds.classes) == 10
    assert ds.image_size == (28, 28)
    images, labels = fake_split("mnist", "test")
    assert torch.equal(ds.images, torch.from_numpy(images[10:30]))
    assert torch.equal(ds.labels, torch.from_numpy(labels[10:30]))
    image, label = ds[0]
    assert image.shape == (28, 28)
    assert int(label) == int(labels[10])


@pytest.mark.parametrize(
    ("spec", "n", "size", "classes0"),
    [
        ("usps:test[:50%]", 20, (16, 16), "0 - zero"),
        ("usps:train", 60, (16, 16), "0 - zero"),
        ("fashion-mnist:train[-7:]", 7, (28, 28), "T-shirt/top"),
        ("kmnist:test[25%:]", 30, (28, 28), "o"),
    ],
)
def test_every_dataset_loads(dirs, spec, n, size, classes0):
    ds = load_dataset(spec, *dirs, offline=True)
    assert len(ds) == n
    assert ds.image_size == size
    assert ds.classes[0] == classes0
    assert int(ds.labels.min()) >= 0
    assert int(ds.labels.max()) <= 9


def test_cache_hit_does_no_parsing(dirs, monkeypatch):
    first = load_dataset("mnist:train[:50%]", *dirs, offline=True)

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed raw files although the cache holds them")

    monkeypatch.setattr(cache_mod, "read_idx_images", no_parsing)
    monkeypatch.setattr(cache_mod, "read_idx_labels", no_parsing)
    again = load_dataset("mnist:train[:50%]", *dirs, offline=True)
    other_slice = load_dataset("mnist:train[50%:]", *dirs, offline=True)  # same split, same cache
    assert torch.equal(again.images, first.images)
    assert again.digest == first.digest
    assert len(first) + len(other_slice) == FAKE_SIZES["train"]
    assert [p.name for p in dirs[1].iterdir()] == [Path(prepare("mnist:train", *dirs).cache_path).name]


def test_digest_is_stable_and_depends_on_content_and_slice(dirs, tmp_path):
    data_dir, cache_dir = dirs
    a = prepare("usps:test[:10]", data_dir, cache_dir, offline=True)
    assert prepare("usps:test[0:10]", data_dir, tmp_path / "other-cache", offline=True).digest == a.digest
    assert prepare("usps:test[:11]", data_dir, cache_dir, offline=True).digest != a.digest
    assert (
        prepare("usps:test[:50%]", data_dir, cache_dir, offline=True).digest
        == prepare("usps:test[:20]", data_dir, cache_dir, offline=True).digest
    )  # 50% of 40 = 20


def test_unreadable_cache_file_is_rebuilt(dirs):
    prepared = prepare("kmnist:test", *dirs, offline=True)
    Path(prepared.cache_path).write_bytes(b"not a torch file")
    again = prepare("kmnist:test", *dirs, offline=True)
    assert len(load(again)) == FAKE_SIZES["test"]


def test_load_without_its_cache_file_says_how_to_fix(dirs):
    prepared = prepare("kmnist:test", *dirs, offline=True)
    Path(prepared.cache_path).unlink()
    with pytest.raises(DataError, match="missing or unreadable; prepare the dataset again"):
        load(prepared)


def test_empty_slice_names_spec_and_split_size(dirs):
    with pytest.raises(DataError, match=r"spec 'usps:test\[30:30\]' selects no samples.* 40 samples"):
        prepare("usps:test[30:30]", *dirs, offline=True)


def test_cache_dir_holds_no_temp_files(dirs):
    load_dataset("fashion-mnist:test", *dirs, offline=True)
    names = [p.name for p in dirs[1].iterdir()]
    assert len(names) == 1
    assert names[0].startswith("fashion-mnist-test-v1-")
    assert names[0].endswith(".pt")

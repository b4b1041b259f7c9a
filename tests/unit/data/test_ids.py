"""Which image of its source files each image of a prepared dataset is: the ids predictions are reported by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitflow.data import load, prepare
from digitflow.data.ids import image_ids, source_positions
from digitflow.data.own import holdout_indices
from digitflow.errors import DataError
from digitflow.params.run import build_config
from tests.fakedata import fake_data_dir, fake_digits, write_idx, write_image_folder, write_kaggle_csv


def prepared(spec, tmp_path, data_dir="unused"):
    return prepare(spec, data_dir, tmp_path / "cache")


def test_a_folders_ids_are_its_image_paths_a_csvs_its_rows_an_idx_files_its_indices(tmp_path):
    images, labels = fake_digits(12)
    folder = write_image_folder(tmp_path / "d", images, labels)
    ids = image_ids(prepared(f"folder:{folder}", tmp_path))
    assert ids == sorted(str(p) for p in folder.rglob("*.png"))  # class by class, sorted within: reading order
    write_kaggle_csv(tmp_path / "d.csv", images, labels)
    assert image_ids(prepared(f"csv:{tmp_path}/d.csv[2:5]", tmp_path)) == ["3", "4", "5"]  # Kaggle's ImageId
    write_idx(tmp_path / "idx" / "images", images)
    write_idx(tmp_path / "idx" / "labels", labels.astype(np.uint8))
    assert image_ids(prepared(f"idx:{tmp_path}/idx[-2:]", tmp_path)) == ["10", "11"]


def test_a_side_of_a_holdout_names_the_images_it_drew(tmp_path):
    images, labels = fake_digits(40)
    write_kaggle_csv(tmp_path / "d.csv", images, labels)
    side = prepared(f"csv:{tmp_path}/d.csv?split=test,holdout=25,seed=3[1:]", tmp_path)
    expected = holdout_indices(40, "25", "3", "test")[1:]
    assert torch.equal(source_positions(side), expected)
    assert image_ids(side) == [str(i + 1) for i in expected.tolist()]
    assert torch.equal(load(side).images, torch.from_numpy(images)[expected])  # the ids name those very images


def test_a_registered_datasets_ids_are_indices_in_its_split(tmp_path, monkeypatch):
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",))
    assert image_ids(prepared("mnist:test[5:8]", tmp_path, data_dir)) == ["5", "6", "7"]


def test_a_folder_without_class_sub_folders_is_unlabeled_images_for_prediction_only(tmp_path):
    images, _ = fake_digits(5)
    flat = tmp_path / "incoming"
    write_image_folder(tmp_path / "d", images, np.zeros(5, dtype=np.int64))
    (tmp_path / "d" / "0").rename(flat)
    data = prepared(f"folder:{flat}", tmp_path)
    dataset = load(data)
    assert dataset.classes == ()
    assert dataset.labels.tolist() == [-1] * 5
    assert torch.equal(dataset.images, torch.from_numpy(images))
    assert dict(data.notes)["labels"] == "absent: for prediction only"
    assert image_ids(data) == [str(flat / f"{i:05d}.png") for i in range(5)]
    with pytest.raises(DataError, match="has no class sub-folders: a folder of unlabeled images is for prediction"):
        build_config(train=f"folder:{flat}", device="cpu")

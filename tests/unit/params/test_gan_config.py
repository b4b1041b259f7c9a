"""The GAN's config on a user's own files: the same hold-out and class checks as the classifier's run."""

from __future__ import annotations

import pytest

from digitflow.data import parse_spec
from digitflow.data.own import classes_of
from digitflow.errors import DataError
from digitflow.params.gan import build_gan_config
from tests.fakedata import fake_digits, write_image_folder, write_kaggle_csv


def test_own_folder_without_test_trains_on_its_rest_and_judges_fid_on_its_holdout(tmp_path):
    images, labels = fake_digits(40)
    folder = write_image_folder(tmp_path / "digits", images, labels)
    config = build_gan_config(train=f"folder:{folder}", output_dir=str(tmp_path / "out"))
    assert config.data.train == f"folder:{folder}?split=train,holdout=10,seed=0"
    assert config.data.test == f"folder:{folder}?split=test,holdout=10,seed=0"
    assert len(classes_of(parse_spec(config.data.train))) == 10  # what the GAN flow sizes its judge by


def test_own_test_set_of_other_classes_is_one_line(tmp_path):
    images, labels = fake_digits(40)
    folder = write_image_folder(tmp_path / "digits", images, labels % 5)  # classes 0-4 only
    csv = write_kaggle_csv(tmp_path / "test.csv", images, labels)
    with pytest.raises(DataError, match="are not those of"):
        build_gan_config(train=f"folder:{folder}", test=f"csv:{csv}", output_dir=str(tmp_path / "out"))

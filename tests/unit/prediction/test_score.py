"""Scoring images with an exported classifier: probabilities, framing, classes, one-line errors."""

from __future__ import annotations

import zipfile

import pytest
import torch
from torch import nn

from digitflow.data.cache import DigitDataset
from digitflow.data.framing import frame_images
from digitflow.errors import ConfigError
from digitflow.export.metadata import ModelMetadata
from digitflow.prediction.inputs import input_spec
from digitflow.prediction.model import ScoringModel, load_scoring_model
from digitflow.prediction.score import class_probabilities, predict, predict_dataset


class Brightness(nn.Module):
    """Logits (N, 3): the mean brightness of the top, middle and bottom thirds of a 27x27 or 28x28 image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, rows].mean(dim=(1, 2)) for rows in (slice(0, 9), slice(9, 18), slice(18, 27))], 1)


def model(frame: str = "mnist-frame") -> ScoringModel:
    return ScoringModel(Brightness(), ModelMetadata(("top", "middle", "bottom"), frame), "brightness")


def banded(n: int, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images with a bright band in third ``label``, and the labels."""
    labels = torch.arange(n) % 3
    images = torch.zeros(n, size, size, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        third = size // 3
        images[i, label * third : (label + 1) * third, 4:-4] = 255
    return images, labels


def test_each_image_gets_its_class_probabilities_and_the_class_they_favour():
    images, labels = banded(7)
    predictions = predict(model(), images, [f"img{i}" for i in range(7)], labels, batch_size=3)
    assert predictions.probabilities.shape == (7, 3)
    assert torch.allclose(predictions.probabilities.sum(1), torch.ones(7))
    assert torch.equal(predictions.labels, labels)
    assert torch.equal(predictions.confidence, predictions.probabilities.max(1).values)
    assert predictions.counts() == [3, 2, 2]
    assert predictions.accuracy() == 1.0
    wrong = predict(model(), images, [str(i) for i in range(7)], (labels + 1) % 3)
    assert wrong.accuracy() == 0.0
    assert predict(model(), images, [str(i) for i in range(7)]).accuracy() is None


def test_batches_do_not_change_the_probabilities():
    images = torch.rand(10, 1, 28, 28)
    whole = class_probabilities(Brightness(), images, 3, batch_size=10)
    assert torch.equal(class_probabilities(Brightness(), images, 3, batch_size=4), whole)
    assert torch.allclose(whole, Brightness()(images).softmax(1))


def test_images_of_another_size_are_framed_as_the_model_says():
    images, labels = banded(6, size=16)  # USPS-sized
    for frame in ("mnist-frame", "resize"):
        expected = Brightness()(frame_images(images, frame)).softmax(1)
        for batch_size in (4, 6):  # framed a batch at a time: the same images
            predictions = predict(model(frame), images, [str(i) for i in range(6)], labels, batch_size)
            assert torch.allclose(predictions.probabilities, expected)


def test_a_labelled_input_of_other_classes_is_a_one_line_error():
    images, labels = banded(6)
    dataset = DigitDataset(images, labels, "folder:pets", "folder", "d", 3, ("cat", "dog", "bird"))
    with pytest.raises(ConfigError, match=r"classes of folder:pets \(3: cat, dog, bird, \.\.\.\) are not") as exc:
        predict_dataset(model(), dataset, [str(i) for i in range(6)])
    assert "\n" not in str(exc.value)
    unlabeled = DigitDataset(images, torch.full((6,), -1), "csv:test.csv", "csv", "d", 3, ("0", "1", "2"))
    assert predict_dataset(model(), unlabeled, [str(i) for i in range(6)]).true_labels is None
    labelled = DigitDataset(images, labels, "folder:d", "folder", "d", 3, ("top", "middle", "bottom"))
    assert predict_dataset(model(), labelled, [str(i) for i in range(6)]).accuracy() == 1.0


def test_a_model_whose_outputs_are_not_its_classes_is_a_one_line_error():
    wrong = ScoringModel(Brightness(), ModelMetadata(("a", "b")), "two")
    with pytest.raises(ConfigError, match=r"returns \(4, 3\) for 4 images; its record names 2 classes"):
        predict(wrong, banded(4)[0], ["a", "b", "c", "d"])


def test_model_files_that_cannot_be_loaded_are_one_line_errors(tmp_path, caplog):
    with pytest.raises(ConfigError, match="no model file"):
        load_scoring_model(tmp_path / "missing.pt")
    (tmp_path / "notes.pt").write_text("not a model")
    with pytest.raises(ConfigError, match=r"notes\.pt is not TorchScript \(not a zip archive\)"):
        load_scoring_model(tmp_path / "notes.pt")
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as archive:  # a zip, but no model in it
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(ConfigError, match=r"cannot load .*other\.pt2 as a torch\.export program") as exc:
        load_scoring_model(tmp_path / "other.pt2")
    assert "\n" not in str(exc.value)
    assert not caplog.records  # torch's traceback is not logged on top


def test_a_folder_is_read_in_the_models_framing_unless_it_names_its_own():
    assert input_spec("folder:scans", ModelMetadata(("a",), "resize")) == "folder:scans?frame=resize"
    assert input_spec("folder:scans", ModelMetadata(("a",), "mnist-frame")) == "folder:scans"
    assert input_spec("folder:scans?frame=resize[:10]", ModelMetadata(("a",))) == "folder:scans?frame=resize[:10]"
    assert input_spec("usps:test", ModelMetadata(("a",), "resize")) == "usps:test"  # framed when scored

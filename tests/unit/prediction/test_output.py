"""Predictions as files: a CSV row per image, Kaggle's submission, whole or not at all."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from digitflow.data.registry import DIGIT_CLASSES
from digitflow.errors import ConfigError
from digitflow.prediction.output import (
    check_writable,
    default_submission,
    label_names,
    write_predictions,
    write_submission,
)
from digitflow.prediction.score import Predictions

PROBABILITIES = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_row_per_image_with_its_id_label_confidence_and_each_probability(tmp_path):
    ids = ["scans/a,b.png", 'say "hi".png', "c.png"]  # CSV quoting where a path needs it
    predictions = Predictions(ids, PROBABILITIES, ("cat", "dog", "bird"))
    written = rows(write_predictions(predictions, tmp_path / "p.csv"))
    assert list(written[0]) == ["image", "label", "confidence", "p_cat", "p_dog", "p_bird"]
    assert [r["image"] for r in written] == ids
    assert [r["label"] for r in written] == ["dog", "cat", "bird"]
    assert [float(r["confidence"]) for r in written] == pytest.approx([0.7, 0.6, 0.6])
    assert [float(written[1][f"p_{c}"]) for c in ("cat", "dog", "bird")] == pytest.approx([0.6, 0.3, 0.1])


def test_digits_are_written_by_their_digit_and_labels_beside_the_prediction(tmp_path):
    probabilities = torch.zeros(2, 10)
    probabilities[0, 7], probabilities[1, 3] = 1.0, 1.0
    predictions = Predictions(["1", "2"], probabilities, DIGIT_CLASSES, true_labels=torch.tensor([7, 8]))
    written = rows(write_predictions(predictions, tmp_path / "p.csv"))
    assert list(written[0])[:5] == ["image", "label", "confidence", "true_label", "p_0"]
    assert [(r["label"], r["true_label"]) for r in written] == [("7", "7"), ("3", "8")]
    assert label_names(DIGIT_CLASSES) == [str(d) for d in range(10)]
    submission = write_submission(predictions, tmp_path / "s.csv")
    assert submission.read_text() == "ImageId,Label\n1,7\n2,3\n"


def test_the_submission_goes_beside_the_predictions_unless_named():
    assert default_submission("out/predictions.csv") == Path("out/predictions-submission.csv")


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"--output .*: no folder .*missing; create it"):
        check_writable(tmp_path / "missing" / "p.csv")
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        check_writable(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="no folder"):  # a file where the folder should be
        check_writable(tmp_path / "file" / "p.csv", "--submission")
    check_writable(tmp_path / "p.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the check leaves nothing behind


def test_a_failed_write_leaves_the_old_file_and_no_half_written_one(tmp_path, monkeypatch):
    path = tmp_path / "p.csv"
    path.write_text("yesterday's predictions\n")

    def full_disk(self, text, encoding=None):
        with self.open("w", encoding=encoding) as f:
            f.write(text[:10])  # half of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(ConfigError, match=r"cannot write .*p\.csv \(No space left on device\); nothing was written"):
        write_predictions(Predictions(["a", "b", "c"], PROBABILITIES, ("x", "y", "z")), path)
    monkeypatch.undo()
    assert path.read_text() == "yesterday's predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]

"""Predictions as files: one CSV row per image, and Kaggle's ``ImageId,Label`` submission.

Each file is written whole or not at all (a temporary file beside it, then a rename), and
:func:`check_writable` says before any work whether it can be.

The predictions file's columns: ``image`` (the image's id: file path, CSV row, index), ``label`` (the
predicted class), ``confidence`` (its probability), ``true_label`` (only when the input has labels), then
``p_<class>`` for each class. The digits' classes are written by their digit (``7``, ``p_7``), the others by
their names (a folder's sub-folder names).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from digitflow.data.registry import DIGIT_CLASSES
from digitflow.errors import ConfigError
from digitflow.fileio import atomic_write
from digitflow.prediction.score import Predictions

SUBMISSION_SUFFIX = "-submission"  # predictions.csv -> predictions-submission.csv


def label_names(classes: tuple[str, ...]) -> list[str]:
    """How a class is written: the digits' ``0 - zero`` as ``0``, any other name as it is."""
    if classes == DIGIT_CLASSES:
        return [name.split(" - ")[0] for name in classes]
    return list(classes)


def default_submission(output: str | Path) -> Path:
    """Where the submission goes when not named: beside ``output``, ``<stem>-submission.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}{SUBMISSION_SUFFIX}.csv")


def check_writable(path: str | Path, option: str = "--output") -> None:
    """ConfigError (one line) unless a file can be written at ``path``: its folder exists and takes a new
    file, and ``path`` is not a folder. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: no folder {folder}; create it or write elsewhere")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path} exists and is read-only")


def write_predictions(predictions: Predictions, path: str | Path) -> Path:
    """Write one row per image (the module's docstring says the columns); the path written."""
    names = label_names(predictions.classes)
    header = ["image", "label", "confidence"]
    if predictions.true_labels is not None:
        header.append("true_label")
    header += [f"p_{name}" for name in names]
    predicted = predictions.labels.tolist()
    truth = None if predictions.true_labels is None else predictions.true_labels.tolist()
    # The numbers of every row at once (numpy formats 10,000 rows in tens of milliseconds), then the text
    # columns in front of each row.
    numbers = np.column_stack([predictions.confidence.numpy(), predictions.probabilities.numpy()])
    lines = _format_rows(numbers)
    quoted = [_field(name) for name in names]
    out = [",".join(_field(h) for h in header)]
    for i, (image, row) in enumerate(zip(predictions.ids, lines, strict=True)):
        confidence, probabilities = row.split(",", 1)
        front = f"{_field(image)},{quoted[predicted[i]]},{confidence}"
        out.append(f"{front},{quoted[truth[i]]},{probabilities}" if truth is not None else f"{front},{probabilities}")
    return _write_text(path, "\n".join(out) + "\n")


def write_submission(predictions: Predictions, path: str | Path) -> Path:
    """Kaggle's Digit Recognizer submission: ``ImageId,Label``, a row per image (its id, its predicted
    class written as :func:`label_names` writes it); the path written."""
    names = label_names(predictions.classes)
    labels = predictions.labels.tolist()
    rows = [f"{_field(image)},{_field(names[label])}" for image, label in zip(predictions.ids, labels, strict=True)]
    return _write_text(path, "ImageId,Label\n" + "\n".join(rows) + "\n")


def _format_rows(numbers: np.ndarray) -> list[str]:
    """Rows of floats as CSV text, 6 decimals."""
    buffer = io.StringIO()
    np.savetxt(buffer, numbers, fmt="%.6f", delimiter=",")
    return buffer.getvalue().splitlines()


def _field(text: str) -> str:
    """A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180)."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_text(path: str | Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    try:
        return atomic_write(path, write)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); nothing was written there") from None

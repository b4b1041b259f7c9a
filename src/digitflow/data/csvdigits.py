"""``csv:FILE``: Kaggle's Digit Recognizer layout, a header ``label,pixel0,...,pixel783`` then one image
a row, pixels 0-255 row by row (28x28). Kaggle's ``test.csv`` has no ``label`` column: such a file is
read with every label -1, for prediction only. Read with pandas; every problem is a one-line DataError
naming the file and the row (``row 1`` is the first image, on line 2).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from digitflow.errors import DataError
from digitflow.fileio import one_line

SIDE = 28
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]
UNLABELED = -1  # the label of every image of a file without a label column
LAYOUT_HINT = "expected Kaggle's header label,pixel0,...,pixel783 (or pixel0,...,pixel783 for prediction)"


def header(path: Path) -> list[str]:
    """The column names of ``path``; DataError if it is missing, unreadable or not in Kaggle's layout."""
    try:  # the first line alone (pandas' nrows=0 reads a first chunk of the file: 30-110 ms for Kaggle's)
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            columns = [c.strip() for c in next(csv.reader(f), [])]
    except FileNotFoundError:
        raise DataError(f"csv:{path}: no such file") from None
    except (OSError, ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path} cannot be read as CSV ({one_line(e)})") from e
    if not any(columns):
        raise DataError(f"{path} is empty or starts with an empty line; {LAYOUT_HINT}")
    pixels = columns[1:] if columns[:1] == ["label"] else columns
    if pixels != PIXELS:
        raise DataError(f"{path} has {len(pixels)} pixel columns ({', '.join(columns[:3])}, ...); {LAYOUT_HINT}")
    return columns


def has_labels(path: Path) -> bool:
    """Whether ``path`` (Kaggle's layout) has a label column; reads the header line only."""
    return header(path)[0] == "label"


def read_csv_digits(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) (-1 without a label column) of a Kaggle CSV file.

    Raises DataError naming the file and row of the first short or long row, non-numeric cell, pixel
    outside 0-255 or label outside ``0..num_classes - 1``.
    """
    columns = header(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: {_row_problem(one_line(e))}; {LAYOUT_HINT}") from e
    if frame.empty:
        raise DataError(f"{path} holds no images, only its header")
    # Whole numbers in every cell (pandas reads them as int64): no empty cell, nothing to round, and the
    # range checks below run on the integers once; anything else is checked cell by cell as floats.
    integers = all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes)
    numeric = all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes)
    if integers:
        values = frame.to_numpy()
    else:
        values = frame.to_numpy(dtype=np.float64) if numeric else np.full(frame.shape, np.nan)
    bad = np.empty((0, 2)) if integers else np.argwhere(np.isnan(values))
    if len(bad):
        # Read again as text, only now: the fast numeric read above cannot say what a bad cell holds.
        cells = pd.read_csv(path, dtype=str, keep_default_na=False).to_numpy()
        bad = np.argwhere(pd.DataFrame(cells).apply(pd.to_numeric, errors="coerce").isna().to_numpy())
        row, col = (int(i) for i in bad[0])
        cell = cells[row, col]
        if isinstance(cell, str) and cell.strip():
            what = f"'{cell}' is not a number"
        else:  # pandas pads a short row with empty cells: say so rather than name the first padded one
            fields = _fields_on_line(path, row + 2)
            if fields < len(columns):
                raise DataError(f"{path} row {row + 1} (line {row + 2}) has {fields} cells, expected {len(columns)}")
            what = "the cell is empty"
        raise DataError(f"{path} row {row + 1} (line {row + 2}), column {columns[col]}: {what}")
    labelled = columns[0] == "label"
    pixels = values[:, 1:] if labelled else values
    in_range = integers and pixels.min() >= 0 and pixels.max() <= 255
    wrong = np.empty((0, 2)) if in_range else np.argwhere((pixels < 0) | (pixels > 255) | (pixels != np.floor(pixels)))
    if len(wrong):
        row, col = (int(i) for i in wrong[0])
        raise DataError(
            f"{path} row {row + 1} (line {row + 2}), column {PIXELS[col]}: pixel {pixels[row, col]:g} "
            "is not a whole number 0-255"
        )
    if labelled:
        labels = values[:, 0]
        outside = np.flatnonzero((labels < 0) | (labels >= num_classes) | (labels != np.floor(labels)))
        if len(outside):
            row = int(outside[0])
            raise DataError(
                f"{path} row {row + 1} (line {row + 2}): label {labels[row]:g} is outside 0..{num_classes - 1}"
                + ("; give the number of classes with csv:FILE?classes=N" if labels[row] >= num_classes else "")
            )
        label_tensor = torch.from_numpy(labels.astype(np.int64))
    else:
        label_tensor = torch.full((len(values),), UNLABELED, dtype=torch.int64)
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, SIDE, SIDE))
    return images, label_tensor


def _fields_on_line(path: Path, line_number: int) -> int:
    """How many comma-separated cells line ``line_number`` (1 = the header) of ``path`` holds."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if number == line_number:
                return len(line.rstrip("\r\n").split(","))
    return 0


def _row_problem(message: str) -> str:
    """pandas' 'Expected 785 fields in line 7, saw 786' in the file's own terms (line 2 is row 1)."""
    return message.replace("Error tokenizing data. C error: ", "")

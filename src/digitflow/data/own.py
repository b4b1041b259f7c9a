"""A user's own files as a dataset: ``idx:DIR``, ``folder:DIR`` and ``csv:FILE`` specs.

This module says which files a spec reads (:func:`source_files`), what its classes are without reading
the images (:func:`classes_of`, also for the registered datasets), reads the whole dataset
(:func:`read_own`) and draws a seeded hold-out (:func:`holdout_indices`). Caching and slicing are
:mod:`digitflow.data.cache`'s, as for every dataset.

Classes: a folder's sub-folder names (the registered digits' names when they are exactly ``0``..``9``,
so a folder of digits compares with MNIST and USPS), else ``classes=N`` (default 10: the digits).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from digitflow.data import csvdigits, folder, registry
from digitflow.data.formats import open_maybe_compressed, read_idx_images, read_idx_labels
from digitflow.data.spec import DatasetSpec
from digitflow.errors import DataError


@dataclass(frozen=True)
class OwnData:
    """A whole own dataset: uint8 images (N, 28, 28), int64 labels (N,) (-1: none), classes, notes."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    notes: tuple[tuple[str, str], ...]  # how it was read (inversion, framing, ...), recorded with the run


def class_names(names: list[str]) -> tuple[str, ...]:
    """Class names as given, or the registered digits' names for exactly ``0``..``9``."""
    if names == [str(d) for d in range(10)]:
        return registry.DIGIT_CLASSES
    return tuple(names)


def classes_of(spec: DatasetSpec) -> tuple[str, ...]:
    """The classes of any spec, without reading its images (a folder's names are listed)."""
    if not spec.is_own:
        return tuple(registry.DATASETS[spec.name].classes)
    if spec.name == "folder":
        if folder.is_unlabeled(Path(spec.path)):
            return ()
        return class_names([p.name for p in folder.class_folders(Path(spec.path))])
    return class_names([str(i) for i in range(int(spec.option("classes")))])


def has_labels(spec: DatasetSpec) -> bool:
    """Whether a spec's images have labels (all do, but a CSV file without its label column and a folder
    of images without class sub-folders)."""
    if spec.name == "csv":
        return csvdigits.has_labels(Path(spec.path))
    return not (spec.name == "folder" and folder.is_unlabeled(Path(spec.path)))


def unlabeled_reason(spec: DatasetSpec) -> str:
    """Why a spec without labels (:func:`has_labels`) has none, for an error that refuses it."""
    if spec.name == "csv":
        return f"{spec.path} has no label column: a CSV file without labels is for prediction only"
    return f"{spec.path} has no class sub-folders: a folder of unlabeled images is for prediction only"


def source_files(spec: DatasetSpec) -> list[Path]:
    """The files an own spec reads, in reading order; DataError if they are not there."""
    path = Path(spec.path)
    if spec.name == "folder":
        return [p for p, _ in folder.image_files(path)]
    if spec.name == "csv":
        if not path.is_file():
            raise DataError(f"csv:{path}: no such file; give a CSV file in Kaggle's Digit Recognizer layout")
        return [path]
    return list(idx_pair(path, spec.option("prefix")))


def source_digest(spec: DatasetSpec, paths: list[Path], content: str) -> str:
    """sha256 of what an own spec's whole dataset is made from: its kind, the reading options, the files'
    names relative to the spec's path (a folder's classes are in them) and ``content`` (their bytes'
    :func:`digitflow.data.cache.files_digest`). Not the split, nor where the files are."""
    root = Path(spec.path)
    names = [str(p.relative_to(root)) if spec.name == "folder" else p.name for p in paths]
    reading = [(k, v) for k, v in spec.options if k not in ("holdout", "seed")]
    return hashlib.sha256(repr((spec.name, reading, names, content)).encode()).hexdigest()


def read_own(spec: DatasetSpec, paths: list[Path]) -> OwnData:
    """Read an own spec's whole dataset from ``paths`` (:func:`source_files`), checked; DataError naming the
    file and the row or image of the first problem."""
    classes = classes_of(spec)
    if spec.name == "folder":
        files = folder.image_files(Path(spec.path))
        images, note = folder.read_folder(Path(spec.path), files, spec.option("frame"), spec.option("invert"))
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        notes: tuple[tuple[str, str], ...] = (("reading", note),)
        if not classes:
            notes += (("labels", "absent: for prediction only"),)
    elif spec.name == "csv":
        images, labels = csvdigits.read_csv_digits(paths[0], len(classes))
        notes = (("labels", "absent: for prediction only"),) if int(labels[0]) < 0 else ()
    else:
        images, labels = _read_idx_pair(paths[0], paths[1], len(classes))
        notes = (("files", f"{paths[0].name}, {paths[1].name}"),)
    return OwnData(images, labels, classes, notes)


def holdout_indices(n: int, percent: str, seed: str, split: str) -> torch.Tensor:
    """The sorted indices of ``split`` (``train`` or ``test``) when ``percent`` of ``n`` images, drawn
    with ``seed``, are held out as the test split (``floor(percent * n / 100)`` of them, at least one).

    numpy's PCG64 gives the same draw on any machine and version; DataError if either side is empty.
    """
    held = max(1, int(Fraction(Decimal(percent)) * n // 100))
    if held >= n:
        raise DataError(f"cannot hold out {percent}% of {n} images as a test split: no training images would be left")
    order = np.random.default_rng(int(seed)).permutation(n)
    side = order[:held] if split == "test" else order[held:]
    return torch.from_numpy(np.sort(side).astype(np.int64))


def idx_pair(root: Path, prefix: str = "") -> tuple[Path, Path]:
    """The IDX image file and label file in ``root`` (names starting with ``prefix``), told apart by their
    headers (3 dimensions: images, 1: labels); DataError unless there is exactly one of each."""
    if not root.is_dir():
        raise DataError(f"idx:{root}: no such folder; give a folder with an IDX image file and its label file")
    kinds: dict[int, list[Path]] = {3: [], 1: []}
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.name.startswith(prefix)):
        head = _idx_head(path)
        if head is not None and head in kinds:
            kinds[head].append(path)
    images, labels = kinds[3], kinds[1]
    if len(images) == 1 and len(labels) == 1:
        return images[0], labels[0]
    found = ", ".join(p.name for p in images + labels) or "no IDX files"
    hint = "pick one pair with idx:DIR?prefix=NAME (e.g. prefix=t10k)" if images or labels else ""
    raise DataError(f"idx:{root} needs one IDX image file and one label file, found {found}; {hint}".rstrip("; "))


def _idx_head(path: Path) -> int | None:
    """The number of dimensions an IDX file declares, None for a file that is not IDX (compressed or not)."""
    try:
        with open_maybe_compressed(path) as f:
            magic = f.read(4)
    except (OSError, EOFError):
        return None
    return magic[3] if len(magic) == 4 and magic[:2] == b"\0\0" and magic[2] in (0x08, 0x09, 0x0B, 0x0C) else None


def _read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An IDX pair -> (uint8 (N, 28, 28), int64 (N,)), checked as the registered datasets are."""
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{images_path} holds {tuple(images.shape[1:])} images; idx: takes 28x28 images")
    outside = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(outside):
        row = int(outside[0])
        raise DataError(
            f"{labels_path} label {row + 1}: {int(labels[row])} is outside 0..{num_classes - 1}; "
            "give the number of classes with idx:DIR?classes=N"
        )
    return images, labels

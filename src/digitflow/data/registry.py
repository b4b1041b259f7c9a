"""The datasets digitflow knows by name: where their files come from and how to check them.

URLs, file names and official md5s are read from torchvision's own class attributes, so they stay
in step with torchvision's mirrors instead of being retyped here. What torchvision does not know is
added here: the md5 of the *decompressed* content (``raw_md5``) where it is known, which lets a
re-compressed copy (e.g. Debian's Fashion-MNIST package) be accepted.

Other modules read ``registry.DATASETS`` at call time, so tests can swap entries with
``monkeypatch.setitem(DATASETS, name, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torchvision import datasets as tvd


@dataclass(frozen=True)
class FileInfo:
    """One official distribution file: its name, official md5, decompressed md5 and URLs."""

    filename: str
    md5: str  # md5 of the file as distributed (compressed), as torchvision checks it
    raw_md5: str | None  # md5 of the decompressed content, where known; None = not known
    urls: tuple[str, ...]  # mirrors, tried in order


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: its classes, image size, file layout and the files of each split."""

    name: str
    folder: str  # where its files live inside the data dir (torchvision's layout)
    format: str  # "idx" (images file, labels file) or "usps" (one LIBSVM file)
    num_classes: int
    image_size: tuple[int, int]  # (H, W)
    classes: tuple[str, ...]
    splits: dict[str, tuple[FileInfo, ...]]


# md5 of the decompressed files. Fashion-MNIST and MNIST train: upstream's published raw checksums.
# MNIST test and USPS test: computed from the official files (`gzip -dc FILE | md5sum`,
# `bzip2 -dc FILE | md5sum` on the files whose compressed md5 matches torchvision's). No raw md5 is
# known for the others, so only the official compressed file is accepted for them.
RAW_MD5: dict[tuple[str, str], str] = {
    ("mnist", "train-images-idx3-ubyte.gz"): "6bbc9ace898e44ae57da46a324031adb",
    ("mnist", "train-labels-idx1-ubyte.gz"): "a25bea736e30d166cdddb491f175f624",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "2646ac647ad5339dbf082846283269ea",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "27ae3e4e09519cfbb04c329615203637",
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ("fashion-mnist", "train-labels-idx1-ubyte.gz"): "9018921c3c673c538a1fc5bad174d6f9",
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): "8181f5470baa50b63fa0f6fddb340f0a",
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"): "15d484375f8d13e6eb1aabb0c3f46965",
    ("usps", "usps.t.bz2"): "74ff1967c8db4cc0e927683b811dfc4e",
}

# MNIST's class names ("0 - zero", ...) also name USPS's classes: same digits, same label order,
# which keeps cross-domain reports (train on MNIST, test on USPS) in one vocabulary.
DIGIT_CLASSES = tuple(tvd.MNIST.classes)


class _IdxSource(Protocol):
    """What :func:`_idx_dataset` reads from a torchvision MNIST-style dataset class."""

    __name__: str
    mirrors: list[str]
    resources: list[tuple[str, str]]
    classes: list[str]


def _idx_dataset(name: str, cls: _IdxSource) -> DatasetInfo:
    """An MNIST-format dataset from a torchvision class's ``mirrors``/``resources``/``classes``."""

    def files(prefix: str) -> tuple[FileInfo, ...]:
        # resources lists images before labels for each split; keep that order.
        return tuple(
            FileInfo(
                filename=filename,
                md5=md5,
                raw_md5=RAW_MD5.get((name, filename)),
                urls=tuple(mirror + filename for mirror in cls.mirrors),
            )
            for filename, md5 in cls.resources
            if filename.startswith(prefix)
        )

    return DatasetInfo(
        name=name,
        folder=f"{cls.__name__}/raw",  # torchvision: <root>/<ClassName>/raw
        format="idx",
        num_classes=len(cls.classes),
        image_size=(28, 28),
        classes=tuple(cls.classes),
        splits={"train": files("train-"), "test": files("t10k-")},
    )


def _usps() -> DatasetInfo:
    def files(split: str) -> tuple[FileInfo, ...]:
        url, filename, md5 = tvd.USPS.split_list[split]
        return (FileInfo(filename, md5, RAW_MD5.get(("usps", filename)), (url,)),)

    return DatasetInfo(
        name="usps",
        folder="USPS",
        format="usps",
        num_classes=10,
        image_size=(16, 16),
        classes=DIGIT_CLASSES,
        splits={"train": files("train"), "test": files("test")},
    )


DATASETS: dict[str, DatasetInfo] = {
    "mnist": _idx_dataset("mnist", tvd.MNIST),
    "fashion-mnist": _idx_dataset("fashion-mnist", tvd.FashionMNIST),
    "kmnist": _idx_dataset("kmnist", tvd.KMNIST),
    "usps": _usps(),
}

"""The datasets digitflow knows by name: where their files come from and how to check them.

URLs, file names, official md5s and class names are torchvision's (its dataset classes' ``mirrors``,
``resources``, ``classes`` and ``split_list``), written out here rather than read from torchvision at
import: importing torchvision imports its models and ops and with them ``torch._dynamo``, about two
seconds that every command would pay before it parses its options.
``tests/unit/data/test_registry.py`` checks them against the installed torchvision, so they stay in step
with its mirrors. What torchvision does not know is added here: the md5 of the *decompressed* content
(``raw_md5``) where it is known, which lets a re-compressed copy (e.g. Debian's Fashion-MNIST package)
be accepted.

Other modules read ``registry.DATASETS`` at call time, so tests can swap entries with
``monkeypatch.setitem(DATASETS, name, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class TorchvisionIdx:
    """The attributes of one of torchvision's MNIST-style dataset classes that the registry uses."""

    class_name: str  # also the dataset's folder in torchvision's layout: <root>/<class_name>/raw
    mirrors: tuple[str, ...]  # tried in order
    resources: tuple[tuple[str, str], ...]  # (file name, official md5); images before labels for each split
    classes: tuple[str, ...]


TORCHVISION_IDX: dict[str, TorchvisionIdx] = {
    "mnist": TorchvisionIdx(
        class_name="MNIST",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        resources=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        classes=(
            *("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four"),
            *("5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"),
        ),
    ),
    "fashion-mnist": TorchvisionIdx(
        class_name="FashionMNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        resources=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        classes=(
            *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"),
            *("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ),
    ),
    "kmnist": TorchvisionIdx(
        class_name="KMNIST",
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        resources=(
            ("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
            ("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
            ("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
            ("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134"),
        ),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}
_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
TORCHVISION_USPS: dict[str, tuple[str, str, str]] = {  # torchvision's USPS.split_list: split -> url, file, md5
    "train": (_LIBSVM + "usps.bz2", "usps.bz2", "ec16c51db3855ca6c91edd34d0e9b197"),
    "test": (_LIBSVM + "usps.t.bz2", "usps.t.bz2", "8ea070ee2aca1ac39742fdd1ef5ed118"),
}

# MNIST's class names ("0 - zero", ...) also name USPS's classes: same digits, same label order,
# which keeps cross-domain reports (train on MNIST, test on USPS) in one vocabulary.
DIGIT_CLASSES = TORCHVISION_IDX["mnist"].classes


def _idx_dataset(name: str) -> DatasetInfo:
    """An MNIST-format dataset from its torchvision class's ``mirrors``/``resources``/``classes``."""
    source = TORCHVISION_IDX[name]

    def files(prefix: str) -> tuple[FileInfo, ...]:
        return tuple(
            FileInfo(
                filename=filename,
                md5=md5,
                raw_md5=RAW_MD5.get((name, filename)),
                urls=tuple(mirror + filename for mirror in source.mirrors),
            )
            for filename, md5 in source.resources
            if filename.startswith(prefix)
        )

    return DatasetInfo(
        name=name,
        folder=f"{source.class_name}/raw",  # torchvision: <root>/<ClassName>/raw
        format="idx",
        num_classes=len(source.classes),
        image_size=(28, 28),
        classes=source.classes,
        splits={"train": files("train-"), "test": files("t10k-")},
    )


def _usps() -> DatasetInfo:
    def files(split: str) -> tuple[FileInfo, ...]:
        url, filename, md5 = TORCHVISION_USPS[split]
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
    "mnist": _idx_dataset("mnist"),
    "fashion-mnist": _idx_dataset("fashion-mnist"),
    "kmnist": _idx_dataset("kmnist"),
    "usps": _usps(),
}

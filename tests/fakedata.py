"""Tiny datasets in the official file formats, for tests that must not need the network or big data.

Plain functions (no fixtures), usable from any test::

    from tests.fakedata import fake_data_dir

    def test_something(tmp_path, monkeypatch):
        data_dir = fake_data_dir(tmp_path, monkeypatch)  # all four datasets, registry patched
        ds = load_dataset("mnist:train", data_dir, tmp_path / "cache", offline=True)

The images are learnable: label k is a bright block in cell k of a 3x4 grid, over faint noise.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np

from digitflow.data import registry
from digitflow.data.files import locate, md5sum

FAKE_SIZES = {"train": 60, "test": 40}


def fake_digits(n: int, size: tuple[int, int] = (28, 28), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (n, H, W) and int64 labels 0..9 (every class present when n >= 10)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    h, w = size
    images = rng.integers(0, 40, size=(n, h, w), dtype=np.uint8)
    ch, cw = h // 3, w // 4
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 4)
        images[i, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = rng.integers(200, 256, dtype=np.uint8)
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX content for a uint8 array (magic 0x0000 0x08 NDIM, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    # mtime=0: the same content gives the same .gz bytes, hence the same md5.
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def usps_text(images: np.ndarray, labels: np.ndarray) -> bytes:
    """USPS LIBSVM lines ``label 1:v ... 256:v``: labels 1..10, values in [-1, 1]."""
    lines = []
    for image, label in zip(images, labels, strict=True):
        values = image.reshape(-1).astype(np.float64) / 255 * 2 - 1
        features = " ".join(f"{i}:{v:.6f}" for i, v in enumerate(values, start=1))
        lines.append(f"{int(label) + 1} {features}")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_usps(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write a USPS LIBSVM file, bzip2-compressed when ``path`` ends in .bz2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = usps_text(images, labels)
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


def fake_split(
    name: str, split: str, sizes: dict[str, int] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels :func:`write_fake_datasets` writes for ``name:split`` (same arguments)."""
    n = {**FAKE_SIZES, **(sizes or {})}[split]
    # A distinct, stable seed per dataset and split, so the splits differ from one another.
    offset = int.from_bytes(hashlib.sha256(f"{name}:{split}".encode()).digest()[:4], "big")
    return fake_digits(n, registry.DATASETS[name].image_size, seed=seed + offset)


def write_fake_datasets(
    data_dir: Path, names: tuple[str, ...] | None = None, sizes: dict[str, int] | None = None, seed: int = 0
) -> list[Path]:
    """Write every split of the named datasets (default: all) into ``data_dir``, torchvision layout."""
    written = []
    for name, info in sorted(registry.DATASETS.items()):
        if names is not None and name not in names:
            continue
        for split, files in sorted(info.splits.items()):
            images, labels = fake_split(name, split, sizes, seed)
            paths = [locate(data_dir, info, f) for f in files]
            if info.format == "usps":
                written.append(write_usps(paths[0], images, labels))
            else:
                written += [write_idx(paths[0], images), write_idx(paths[1], labels.astype(np.uint8))]
    return written


def fake_urls(filename: str) -> tuple[str, ...]:
    """Two mirrors that cannot reach the network (urllib rejects the scheme at once)."""
    return (f"fake://mirror-a/{filename}", f"fake://mirror-b/{filename}")


def patch_registry(monkeypatch, data_dir: Path, raw_md5: bool = True) -> dict:
    """Make ``DATASETS`` accept the files present in ``data_dir`` (undone by ``monkeypatch``).

    Each present file's md5 becomes the official one (and its decompressed md5 the raw one, unless
    ``raw_md5=False``); every URL becomes an unreachable ``fake://`` one, so nothing can download.
    Returns the patched registry.
    """
    for name, info in list(registry.DATASETS.items()):
        splits = {}
        for split, files in info.splits.items():
            new = []
            for f in files:
                path = locate(data_dir, info, f)
                if path.is_file():
                    f = dataclasses.replace(
                        f, md5=md5sum(path), raw_md5=md5sum(path, decompress=True) if raw_md5 else None
                    )
                new.append(dataclasses.replace(f, urls=fake_urls(f.filename)))
            splits[split] = tuple(new)
        monkeypatch.setitem(registry.DATASETS, name, dataclasses.replace(info, splits=splits))
    return registry.DATASETS


def fake_data_dir(tmp_path: Path, monkeypatch, **kwargs) -> Path:
    """Write all fake datasets under ``tmp_path / "data"`` and patch the registry for them."""
    data_dir = Path(tmp_path) / "data"
    write_fake_datasets(data_dir, **kwargs)
    patch_registry(monkeypatch, data_dir)
    return data_dir


def md5_bytes(data: bytes) -> str:
    """md5 hex of in-memory bytes (to register a file a test is about to 'download')."""
    return hashlib.md5(data).hexdigest()


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, suffix: str = ".png") -> Path:
    """One sub-folder per label (``root/3/00012.png``: image 12), the layout ``folder:DIR`` reads."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = Path(root) / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}{suffix}")
    return Path(root)


def write_kaggle_csv(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """Kaggle's Digit Recognizer layout, ``label,pixel0..pixel783`` (no label column when ``labels`` is None)."""
    rows = images.reshape(len(images), -1).astype(np.int64)
    header = [f"pixel{i}" for i in range(rows.shape[1])]
    if labels is not None:
        rows, header = np.column_stack([labels, rows]), ["label", *header]
    lines = [",".join(header)] + [",".join(map(str, row)) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)

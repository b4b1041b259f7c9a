"""The transform step: verified raw files -> uint8 images + int64 labels, cached as a torch file.

A user's own files (``idx:``, ``folder:``, ``csv:``; :mod:`digitflow.data.own`) are cached the same way:
the whole dataset once, keyed by its files and reading options, and each side of a seeded hold-out
(``split=train``/``test``) in a file of its own cut from it, so slicing and loading do not change.

The cache lives in its own directory (never the data dir) and holds the whole split, keyed by a
sha256 of the raw files' bytes; slices are cut when loading, so every slice of a split shares one
cache file and a rerun does no parsing. Cache files are written atomically (temp + replace) and
read with ``torch.load(weights_only=True)``; an unreadable or stale one is simply rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from digitflow.data import own, registry
from digitflow.data.files import Downloader, fetch
from digitflow.data.formats import read_idx_images, read_idx_labels, read_usps
from digitflow.data.registry import DatasetInfo
from digitflow.data.spec import OWN_KINDS, DatasetSpec, parse_spec
from digitflow.errors import DataError
from digitflow.fileio import atomic_write, one_line

# Bump when the transform's output changes: cache files of older versions are then ignored.
CACHE_VERSION = 1

# files_digest results for this process, keyed by (path, size, mtime).
_digests: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class PreparedDataset:
    """A small picklable record of a prepared (fetched, transformed, cached) dataset slice."""

    spec: str  # canonical spec text
    name: str
    split: str
    cache_path: str  # the whole split as a torch file
    start: int  # resolved slice of the split
    stop: int
    num_samples: int
    digest: str  # sha256 over raw content + slice: same data, same digest, on any machine
    num_classes: int
    image_size: tuple[int, int]  # (H, W)
    raw_digest: str = ""  # files_digest of the raw files; checked against the cache on load
    files: tuple[str, ...] = ()  # the raw files it came from
    classes: tuple[str, ...] = ()  # class names by label; () = the registered dataset's (own: none, unlabeled)
    notes: tuple[tuple[str, str], ...] = ()  # how own files were read (inversion, framing, hold-out), to record


@dataclass(eq=False)
class DigitDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and labels of one dataset slice; ``ds[i]`` is ``(uint8 (H, W) image, int64 label)``."""

    images: torch.Tensor  # uint8 (N, H, W)
    labels: torch.Tensor  # int64 (N,)
    spec: str
    name: str
    digest: str
    num_classes: int
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])


def files_digest(paths: list[Path]) -> str:
    """sha256 hex over the files' bytes, in order (each prefixed by its length, so boundaries count).

    Each file's hash is remembered for this process by path, size and mtime.
    """
    total = hashlib.sha256()
    for path in paths:
        path = Path(path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            one = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    one.update(chunk)
            _digests[key] = one.hexdigest()
        total.update(stat.st_size.to_bytes(8, "big"))
        total.update(bytes.fromhex(_digests[key]))
    return total.hexdigest()


def transform(info: DatasetInfo, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse a split's raw files -> (uint8 images (N, H, W), int64 labels (N,)), validated."""
    if info.format == "idx":
        images, labels = read_idx_images(paths[0]), read_idx_labels(paths[1])
        if len(images) != len(labels):
            raise DataError(
                f"{paths[0]} holds {len(images)} images but {paths[1]} holds "
                f"{len(labels)} labels; one of them is not from the same split"
            )
    elif info.format == "usps":
        images, labels = read_usps(paths[0])
    else:  # a registry entry this code does not know how to read: a bug, not a user error
        raise ValueError(f"unknown dataset format {info.format!r} for {info.name}")
    if tuple(images.shape[1:]) != tuple(info.image_size):
        raise DataError(
            f"{paths[0]} holds {tuple(images.shape[1:])} images, expected {tuple(info.image_size)} for {info.name}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < info.num_classes:
        raise DataError(f"{paths[-1]} holds labels outside 0..{info.num_classes - 1}")
    return images, labels


def prepare(
    spec: DatasetSpec | str,
    data_dir: str | Path,
    cache_dir: str | Path,
    *,
    offline: bool = False,
    downloader: Downloader | None = None,
) -> PreparedDataset:
    """Fetch the spec's raw files, transform them into the cache (unless cached), resolve the slice."""
    spec = parse_spec(str(spec))  # also validates a DatasetSpec built by hand
    if spec.is_own:
        return _prepare_own(spec, Path(cache_dir))
    info = registry.DATASETS[spec.name]
    paths = fetch(spec, data_dir, offline=offline, downloader=downloader)
    raw_digest = files_digest(paths)
    cache_path = _cache_file(Path(cache_dir), spec.name, spec.split, raw_digest)
    # mmap: reading just the header tells N without loading the tensors.
    cached = _read_cache(cache_path, raw_digest, mmap=True)
    if cached is None:
        images, labels = transform(info, paths)
        _write_cache(cache_path, images, labels, raw_digest)
        total = len(labels)
    else:
        total = len(cached["labels"])
        del cached  # release the mapping
    return _sliced(spec, cache_path, raw_digest, total, paths, num_classes=info.num_classes, image_size=info.image_size)


def _cache_file(cache_dir: Path, name: str, split: str, raw_digest: str) -> Path:
    """Where the transformed tensors of ``name``'s ``split`` built from ``raw_digest`` are cached."""
    return cache_dir / f"{name}-{split}-v{CACHE_VERSION}-{raw_digest[:24]}.pt"


def _sliced(
    spec: DatasetSpec, cache_path: Path, raw_digest: str, total: int, paths: list[Path], **fields: Any
) -> PreparedDataset:
    """The :class:`PreparedDataset` of ``spec``'s slice of a cached split of ``total`` samples; its digest
    names the cache version, the raw files and the slice."""
    start, stop = spec.resolve(total)
    slice_key = f"v{CACHE_VERSION}:{raw_digest}:{spec.name}:{spec.split}[{start}:{stop}]"
    return PreparedDataset(
        spec=str(spec),
        name=spec.name,
        split=spec.split,
        cache_path=str(cache_path),
        start=start,
        stop=stop,
        num_samples=stop - start,
        digest=hashlib.sha256(slice_key.encode()).hexdigest(),
        raw_digest=raw_digest,
        files=tuple(str(p) for p in paths),
        **fields,
    )


def load(prepared: PreparedDataset) -> DigitDataset:
    """The prepared slice as tensors, read from the cache file (no parsing)."""
    data = _read_cache(Path(prepared.cache_path), prepared.raw_digest, mmap=False)
    if data is None:
        raise DataError(
            f"cache file {prepared.cache_path} for {prepared.spec} is missing or unreadable; "
            "prepare the dataset again to rebuild it"
        )
    images, labels = data["images"], data["labels"]
    if (prepared.start, prepared.stop) != (0, len(labels)):
        # clone: a slice view would keep (and pickle) the whole split's storage.
        images = images[prepared.start : prepared.stop].clone()
        labels = labels[prepared.start : prepared.stop].clone()
    # an own dataset's classes are its own (none for unlabeled images), a registered one's the registry's
    classes = prepared.classes if prepared.name in OWN_KINDS else tuple(registry.DATASETS[prepared.name].classes)
    return DigitDataset(
        images=images,
        labels=labels,
        spec=prepared.spec,
        name=prepared.name,
        digest=prepared.digest,
        num_classes=prepared.num_classes,
        classes=classes,
    )


def load_dataset(
    spec: DatasetSpec | str,
    data_dir: str | Path,
    cache_dir: str | Path,
    *,
    offline: bool = False,
    downloader: Downloader | None = None,
) -> DigitDataset:
    """:func:`prepare` then :func:`load`."""
    return load(prepare(spec, data_dir, cache_dir, offline=offline, downloader=downloader))


def _prepare_own(spec: DatasetSpec, cache_dir: Path) -> PreparedDataset:
    """:func:`prepare` for a user's own files: the whole dataset cached once, a hold-out side cut from it."""
    paths = own.source_files(spec)
    whole_digest = own.source_digest(spec, paths, files_digest(paths))
    whole_path = _cache_file(cache_dir, spec.name, "all", whole_digest)
    data = _read_cache(whole_path, whole_digest, mmap=True)
    if data is None:
        read = own.read_own(spec, paths)
        extras = {"classes": list(read.classes), "notes": [list(n) for n in read.notes]}
        _write_cache(whole_path, read.images, read.labels, whole_digest, extras)
        data = {"images": read.images, "labels": read.labels, **extras}
    classes, notes = tuple(data["classes"]), tuple((str(k), str(v)) for k, v in data["notes"])
    raw_digest, cache_path, total = whole_digest, whole_path, len(data["labels"])
    if spec.split != "all":
        holdout, seed = spec.option("holdout"), spec.option("seed")
        raw_digest = hashlib.sha256(f"{whole_digest}:{spec.split}:{holdout}:{seed}".encode()).hexdigest()
        cache_path = _cache_file(cache_dir, spec.name, spec.split, raw_digest)
        indices = own.holdout_indices(total, holdout, seed, spec.split)
        if _read_cache(cache_path, raw_digest, mmap=True) is None:
            images, labels = data["images"][indices].clone(), data["labels"][indices].clone()
            _write_cache(cache_path, images, labels, raw_digest, {"classes": list(classes), "notes": []})
        notes += (("holdout", f"{holdout}% drawn with seed {seed}: {len(indices)} of {total} images in {spec.split}"),)
        total = len(indices)
    del data  # release the mapping
    return _sliced(
        spec,
        cache_path,
        raw_digest,
        total,
        paths,
        num_classes=len(classes),
        image_size=(28, 28),
        classes=classes,
        notes=notes,
    )


def _read_cache(path: Path, raw_digest: str, *, mmap: bool) -> dict[str, Any] | None:
    """The cache file's content if it is there, readable and built from ``raw_digest``; else None."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # noqa: BLE001 - truncated/corrupt/foreign file: rebuilding it is the fix
        return None
    ok = (
        isinstance(data, dict)
        and data.get("version") == CACHE_VERSION
        and (not raw_digest or data.get("raw_digest") == raw_digest)
        and isinstance(data.get("images"), torch.Tensor)
        and isinstance(data.get("labels"), torch.Tensor)
        and data["images"].dtype == torch.uint8
        and data["images"].dim() == 3
        and data["labels"].dtype == torch.int64
        and data["labels"].shape == data["images"].shape[:1]
    )
    return data if ok else None


def _write_cache(
    path: Path, images: torch.Tensor, labels: torch.Tensor, raw_digest: str, extras: dict[str, Any] | None = None
) -> None:
    """Save atomically (a temp file in the same directory, then a rename); ``extras``: more plain entries."""
    payload = {**(extras or {}), "version": CACHE_VERSION, "raw_digest": raw_digest, "images": images, "labels": labels}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        reason = getattr(e, "strerror", None) or one_line(e)
        raise DataError(
            f"cannot write the dataset cache {path} ({reason}); choose a writable cache dir with free space"
        ) from e

"""Parsers for the official file formats: IDX (MNIST family) and LIBSVM text (USPS).

Both read compressed (.gz / .bz2, detected by magic bytes, not by name) or plain files, validate
what they read, and raise DataError naming the file on anything malformed or truncated.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitflow.errors import DataError
from digitflow.fileio import one_line

# What to do about a damaged official file, offline or not.
CORRUPT_FILE_HINT = "replace it with the official file, or delete it and run without --offline to download it again"

# IDX type codes -> numpy dtype (big-endian, as the format specifies).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

USPS_SIZE = 16
USPS_FEATURES = USPS_SIZE * USPS_SIZE


def open_maybe_compressed(path: Path) -> io.BufferedIOBase:
    """Open ``path`` for reading, transparently decompressing gzip or bzip2 content."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(3)
    if head[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if head == b"BZh":
        return bz2.open(path, "rb")
    return path.open("rb")


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of ``path``; DataError if the compressed stream is broken."""
    try:
        with open_maybe_compressed(path) as f:
            return f.read()
    except (EOFError, OSError, zlib.error, ValueError) as e:
        # gzip/bz2 raise EOFError on truncation, BadGzipFile (OSError) / zlib.error on corruption.
        raise DataError(f"cannot read {path}: truncated or corrupt ({one_line(e)}); {CORRUPT_FILE_HINT}") from e


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file into an array of its declared dtype and shape; DataError if malformed."""
    return parse_idx(read_bytes(path), path)


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX content; ``path`` only names the source in error messages."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} is truncated or malformed: IDX header declares {ndim} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize  # exact: no int64 overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header declares"
        raise DataError(
            f"{path} is {what}: IDX header declares shape {shape} ({expected} bytes), "
            f"found {len(data)} bytes; {CORRUPT_FILE_HINT}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_images(path: Path) -> torch.Tensor:
    """IDX image file -> uint8 tensor (N, H, W)."""
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise DataError(
            f"{path} is not an IDX image file: shape {array.shape}, dtype {array.dtype}; expected uint8 (N, H, W)"
        )
    return torch.from_numpy(array.copy())


def read_idx_labels(path: Path) -> torch.Tensor:
    """IDX label file -> int64 tensor (N,)."""
    array = read_idx(path)
    if array.ndim != 1:
        raise DataError(f"{path} is not an IDX label file: shape {array.shape}, expected (N,)")
    return torch.from_numpy(array.astype(np.int64))


def read_usps(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """USPS LIBSVM text -> (uint8 images (N, 16, 16), int64 labels (N,)).

    Each line is ``label 1:v1 2:v2 ... 256:v256`` with label in 1..10 and values in [-1, 1].
    Labels become 0..9 and pixels ``uint8((v + 1) / 2 * 255)`` in float32, exactly as
    torchvision's USPS does, so the images are the same bytes torchvision would give.
    """
    text = read_bytes(path).decode("ascii", errors="replace")
    labels: list[int] = []
    rows: list[list[str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        label, values = _usps_line(tokens, path, lineno)
        labels.append(label)
        rows.append(values)
    if not rows:
        raise DataError(f"{path} holds no samples; expected USPS LIBSVM lines 'label 1:v1 ... 256:v256'")
    try:
        # String -> float32 the way torchvision does it, so the rounding is identical.
        pixels = np.asarray(rows, dtype=np.float32)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric pixel value ({one_line(e)})") from e
    if not np.all((pixels >= -1) & (pixels <= 1)):
        bad = int(np.argwhere(~((pixels >= -1) & (pixels <= 1)))[0][0]) + 1
        raise DataError(f"{path}: pixel values must lie in [-1, 1] (sample {bad} does not)")
    images = ((pixels + 1) / 2 * 255).astype(np.uint8).reshape(-1, USPS_SIZE, USPS_SIZE)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _usps_line(tokens: list[str], path: Path, lineno: int) -> tuple[int, list[str]]:
    """One LIBSVM line -> (label 0..9, 256 value strings in feature order)."""
    where = f"{path} line {lineno}"
    try:
        label = int(float(tokens[0]))
    except ValueError:
        raise DataError(f"{where}: label '{tokens[0]}' is not a number") from None
    if not 1 <= label <= 10:
        raise DataError(f"{where}: label {label} outside 1..10")
    if len(tokens) - 1 != USPS_FEATURES:
        # torchvision requires all 256 features too (it reshapes without looking at indices).
        raise DataError(f"{where}: {len(tokens) - 1} features, expected {USPS_FEATURES} (truncated or not a USPS file)")
    values = []
    # LIBSVM indices ascend; with all 256 present they must read 1, 2, ..., 256.
    for position, token in enumerate(tokens[1:], start=1):
        index, sep, value = token.partition(":")
        if not sep or index != str(position):
            raise DataError(f"{where}: malformed feature '{token}', expected {position}:VALUE")
        values.append(value)
    return label - 1, values

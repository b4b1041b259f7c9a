"""Small shared helpers: atomic file writes and one-line error summaries."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def temp_path(dest: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden file name next to ``dest`` (same filesystem, so ``os.replace`` is atomic).

    Unique per process and call, so two writers of the same file never share a temp file. Not
    ``mkstemp``: its 0600 mode would carry over to the final file and hide it from other users of a
    shared directory; here the file gets the usual umask-based mode when first opened.
    """
    return dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{suffix}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Readers see the old file or the complete new one, never half a file; on failure the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, ".tmp" + path.suffix)  # keep the suffix: some writers dispatch on it
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for an error message: its type and first non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

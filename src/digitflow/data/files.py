"""Raw files on disk: where they live, whether they are intact, and downloading the missing ones.

The data dir may be read-only and shared: files already there are only read. It is written to only
to download a missing file, and then only through a temporary file in the same directory that is
verified before ``os.replace`` moves it into place, so no reader ever sees a partial file.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from digitflow.data import own, registry
from digitflow.data.formats import CORRUPT_FILE_HINT, open_maybe_compressed
from digitflow.data.registry import DatasetInfo, FileInfo
from digitflow.data.spec import DatasetSpec, parse_spec
from digitflow.errors import DataError, DownloadError, MissingDataError
from digitflow.fileio import one_line, temp_path

Downloader = Callable[[str, Path], None]
"""``downloader(url, dest)`` writes the content at ``url`` into the file ``dest`` or raises."""
Progress = Callable[[str, int, "int | None"], None]
"""``on_progress(url, bytes_done, bytes_total_or_None)``, called as a download goes."""

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

# Files already verified in this process, keyed by what would change if the file did.
_verified: set[tuple[str, int, int, str, str | None]] = set()


def locate(data_dir: str | Path, info: DatasetInfo, file: FileInfo) -> Path:
    """Where ``file`` of dataset ``info`` lives in ``data_dir`` (torchvision's layout)."""
    return Path(data_dir) / info.folder / file.filename


def md5sum(path: Path, decompress: bool = False) -> str:
    """md5 hex of a file's bytes, or of its decompressed content when ``decompress``."""
    digest = hashlib.md5()
    with open_maybe_compressed(path) if decompress else path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check(path: Path, file: FileInfo) -> str | None:
    """None if ``path`` is an intact copy of ``file``, else why not (one line, for messages).

    Accepted: the official file (md5 of its bytes), or, where the registry knows the md5 of the
    decompressed content, any compression of that same content (e.g. a re-compressed package).
    """
    actual = md5sum(path)
    if actual == file.md5:
        return None
    reason = f"md5 {actual}, expected {file.md5}"
    if file.raw_md5 is None:
        return reason
    try:
        raw_actual = md5sum(path, decompress=True)
    except (EOFError, OSError, ValueError) as e:  # truncated or corrupt compressed stream
        return f"{reason} (and it does not decompress: {one_line(e)})"
    if raw_actual == file.raw_md5:
        return None
    return f"{reason} (decompressed content md5 {raw_actual}, expected {file.raw_md5})"


def verify(path: Path, file: FileInfo) -> None:
    """Raise DataError (naming the file, both checksums and the fix) unless ``path`` is intact.

    A success is remembered for this process, keyed by path, size and mtime, so a file is hashed
    once however many times it is used.
    """
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, file.md5, file.raw_md5)
        if key in _verified:
            return
        reason = check(path, file)
    except OSError as e:  # e.g. no read permission: say so rather than show a traceback
        raise DataError(f"cannot read {path} ({e.strerror or e}); check its permissions") from e
    if reason is not None:
        raise DataError(f"corrupt file {path}: {reason}; {CORRUPT_FILE_HINT}")
    _verified.add(key)


def fetch(
    spec: DatasetSpec | str,
    data_dir: str | Path,
    *,
    offline: bool = False,
    downloader: Downloader | None = None,
) -> list[Path]:
    """Ensure the raw files the spec's split needs are in ``data_dir`` and intact; return them.

    Present files are verified and used without touching the network. Missing ones are downloaded
    (each mirror in turn) unless ``offline``; DataError says which file, where, and how to provide it.
    A user's own files (``idx:``, ``folder:``, ``csv:``) are where their spec says, not in ``data_dir``.
    """
    spec = parse_spec(str(spec))  # also validates a DatasetSpec built by hand
    if spec.is_own:  # a user's own files: nothing to download, only to find
        return own.source_files(spec)
    info = registry.DATASETS[spec.name]
    files = info.splits[spec.split]
    paths = [locate(data_dir, info, f) for f in files]
    missing = [(f, p) for f, p in zip(files, paths, strict=True) if not p.is_file()]
    if missing and offline:
        names = ", ".join(f.filename for f, _ in missing)
        raise MissingDataError(
            f"{spec.name}:{spec.split} needs {names}, not found in {paths[0].parent.absolute()} (offline: no download)",
            "place the official file there or run without --offline",
        )
    for file, path in missing:
        download(file, path, spec=f"{spec.name}:{spec.split}", downloader=downloader)
    for file, path in zip(files, paths, strict=True):
        verify(path, file)
    return paths


def download(file: FileInfo, dest: Path, *, spec: str = "", downloader: Downloader | None = None) -> None:
    """Download ``file`` to ``dest`` from its mirrors in turn, verified before it appears there."""
    downloader = downloader or urllib_download
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create {dest.parent} to download {file.filename} into ({e.strerror}); "
            "choose a writable data dir or place the official file there"
        ) from e
    errors = []
    for url in file.urls:
        # A unique temp name in the same directory: os.replace is then atomic, and two processes
        # downloading the same file at once do not write over each other.
        tmp = temp_path(dest, ".part")
        try:
            downloader(url, tmp)
            reason = check(tmp, file)
            if reason is None:
                tmp.replace(dest)
                return
            errors.append(f"{url}: corrupt download ({reason})")
        except Exception as e:  # noqa: BLE001 - any failure of one mirror means: try the next
            errors.append(f"{url}: {one_line(e)}")
        finally:
            tmp.unlink(missing_ok=True)  # a no-op after a successful replace
    needs = f"{spec} needs " if spec else ""
    reasons = list(dict.fromkeys(e.split(": ", 1)[-1] for e in errors))  # each distinct reason once, without URLs
    raise DownloadError(
        f"{needs}{file.filename}, not found in {dest.parent.absolute()} and no mirror could provide it "
        f"({'; '.join(errors) or 'no mirrors known'})",
        "place the official file there or check the network",
        short=f"{needs}{file.filename}: no mirror could provide it ({'; '.join(reasons) or 'no mirrors known'})",
    )


def urllib_download(
    url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S, on_progress: Progress | None = None
) -> None:
    """The default downloader: stream ``url`` into ``dest`` with urllib.

    ``on_progress(url, bytes_done, bytes_total_or_None)`` is called after every chunk; bind it with
    ``functools.partial`` to pass a reporting downloader to :func:`fetch`.
    """
    # Some mirrors refuse urllib's default User-Agent; torchvision sends its own name too.
    request = urllib.request.Request(url, headers={"User-Agent": "digitflow"})
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        done = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(url, done, total)

"""Build the C++ consumer (consumers/cpp/, `digitflow-classify`) against this Python's libtorch: `make cpp`.

    python scripts/build_cpp.py            # prints the program's path: build/cpp/digitflow-classify
    python scripts/build_cpp.py --force    # configure and build again even if nothing changed

libtorch is the one inside the installed torch wheel (its headers and libraries), found without importing
torch; nothing is downloaded. Each build goes to a folder named by a hash of what it depends on (the
consumer's sources, the torch wheel's folder and version, the compiler and CMake found), so a build whose
inputs did not change is reused at once (the tests call :func:`build` in every session) and a changed source
builds anew. `build/cpp/digitflow-classify` links to the latest build. Needs CMake (3.18 or later), a C++20
compiler (g++ 10+, clang++ 12+; $CXX picks one) and zlib's headers; Ninja is used when found.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "consumers" / "cpp"
BUILD_ROOT = ROOT / "build" / "cpp"
PROGRAM = "digitflow-classify"


class BuildError(Exception):
    """The consumer cannot be built here; the message says why in one line."""


def torch_dir() -> Path:
    """The installed torch package's folder (its include/ and lib/ are libtorch), found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise BuildError("torch is not installed in this Python; run make setup")
    folder = Path(spec.origin).parent
    if not (folder / "include" / "torch" / "script.h").is_file():
        raise BuildError(f"the torch wheel at {folder} has no libtorch headers (include/torch/script.h)")
    return folder


def cxx11_abi(torch: Path) -> int:
    """The C++ ABI libtorch was built with, as its own CMake config records it (torch._C._GLIBCXX_USE_CXX11_ABI)."""
    config = torch / "share" / "cmake" / "Torch" / "TorchConfig.cmake"
    found = re.search(r"_GLIBCXX_USE_CXX11_ABI=(\d)", config.read_text()) if config.is_file() else None
    return int(found.group(1)) if found else 1


def compiler() -> str | None:
    """The C++ compiler CMake will use: $CXX, else c++, g++ or clang++ on PATH."""
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    return None


def missing() -> str | None:
    """Why the consumer cannot be built here (no CMake, no C++ compiler, no zlib headers), or None."""
    if shutil.which("cmake") is None:
        return "CMake not found on PATH (apt-get install cmake)"
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found ($CXX, c++, g++ or clang++; apt-get install g++)"
    probe = subprocess.run(
        [cxx, "-E", "-x", "c++", "-", "-o", os.devnull], input="#include <zlib.h>\n", capture_output=True, text=True
    )
    if probe.returncode != 0:
        return "zlib's headers not found (apt-get install zlib1g-dev)"
    return None


def _tool_version(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout or result.stderr).splitlines()[0] if result.returncode == 0 else ""


def build_key(torch: Path, cxx: str) -> str:
    """A hash of what the build depends on: the sources, the wheel, the compiler and CMake."""
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file() and "build" not in p.relative_to(SOURCE).parts):
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(str(torch).encode() + importlib.metadata.version("torch").encode())
    digest.update(
        cxx.encode() + _tool_version([cxx, "--version"]).encode() + _tool_version(["cmake", "--version"]).encode()
    )
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One build at a time under ``root`` (two test processes may ask at once): the second waits, then reuses it."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        why = (errors or lines or ["no output"])[0]
        raise BuildError(f"{Path(command[0]).name} failed ({why[:300]}); full log: {log}")


def build(root: Path = BUILD_ROOT, *, force: bool = False) -> Path:
    """The built ``digitflow-classify`` (configured and built here unless a build of the same inputs exists).

    Raises BuildError (one line) where it cannot be built: :func:`missing`'s reason, or the failing step
    with the first error line and the log's path.
    """
    reason = missing()
    if reason:
        raise BuildError(reason)
    torch, cxx = torch_dir(), compiler()
    assert cxx is not None  # missing() checked it
    folder = root / build_key(torch, cxx)
    program = folder / PROGRAM
    with _locked(root):
        if force or not (folder / "built").is_file() or not program.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            log = folder / "build.log"
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run(
                [
                    "cmake",
                    "-S",
                    str(SOURCE),
                    "-B",
                    str(folder),
                    *generator,
                    "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_CXX_COMPILER={cxx}",
                    f"-DTORCH_DIR={torch}",
                    f"-DTORCH_CXX11_ABI={cxx11_abi(torch)}",
                ],
                log,
            )
            _run(["cmake", "--build", str(folder), "--parallel", str(os.cpu_count() or 1)], log)
            (folder / "built").touch()
        _link_latest(root, program)
        _remove_others(root, keep=folder)
    return program


def _link_latest(root: Path, program: Path) -> None:
    """``root/digitflow-classify`` -> this build's program, replaced in one step."""
    link = root / PROGRAM
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        new = Path(tmp) / PROGRAM
        new.symlink_to(program.relative_to(root))
        new.replace(link)


def _remove_others(root: Path, keep: Path) -> None:
    """Earlier builds (other hashes): each is a few MB of objects nothing links to any more."""
    for folder in root.iterdir():
        if folder.is_dir() and folder != keep and re.fullmatch(r"[0-9a-f]{16}", folder.name):
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="build_cpp.py")
    parser.add_argument("--force", action="store_true", help="configure and build again even if nothing changed")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        program = build(force=args.force)
    except BuildError as exc:
        print(f"build_cpp: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - began
    link = BUILD_ROOT / PROGRAM
    print(f"{link.relative_to(ROOT)} -> {program.relative_to(ROOT)} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

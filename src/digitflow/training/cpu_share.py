"""A fair share of the CPU cores for each digitflow run on the machine.

Two runs that each start torch's default thread pool (one thread per core) on the same cores do not
share them, they collapse: their OpenMP threads spin waiting for each other, and on 2 cores each trained
at a tenth of its speed alone. So every run registers itself while it computes (:func:`share`: a file in a
folder shared by all runs of this user, held with an exclusive ``flock`` that the kernel drops when the
process dies, so a killed run never counts, and removed when the computing ends, so a process that lives
on, a notebook or a test session, does not count either) and sets its torch threads to the cores divided
among the runs registered now (:func:`apply`, called again every epoch, so a run that started alone hands
half its cores over when another one starts, and takes them back when it ends).

Thread settings given by the user win: with ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set, nothing
changes. Linux and macOS only (``fcntl``); elsewhere each run keeps torch's default.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch

USER_THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_held: IO[str] | None = None  # this process's registration, open (and locked) while it lives


def runs_folder() -> Path:
    """Where runs register: ``$DIGITFLOW_RUNS_DIR``, else a folder of this user's in the temp dir."""
    folder = os.environ.get("DIGITFLOW_RUNS_DIR") or Path(tempfile.gettempdir()) / f"digitflow-runs-{os.getuid()}"
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def managed() -> bool:
    """Whether digitflow chooses the thread count: not where the user set one, nor without ``fcntl``."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return not any(os.environ.get(name) for name in USER_THREAD_SETTINGS)


@contextlib.contextmanager
def share() -> Iterator[int]:
    """This process counted among the runs using the cores for the body, with its torch threads set to
    its share (yielded); nested uses share the outer registration."""
    if _held is not None or not managed():
        yield apply()
        return
    join()
    try:
        yield apply()
    finally:
        leave()


def leave() -> None:
    """No longer count this process (its file removed, its lock released)."""
    global _held
    if _held is None:
        return
    (runs_folder() / f"{os.getpid()}.run").unlink(missing_ok=True)
    _held.close()
    _held = None


def join() -> None:
    """Register this process as a run using the cores, until :func:`leave` or its exit (idempotent)."""
    global _held
    if _held is not None or not managed():
        return
    import fcntl

    folder = runs_folder()
    # locked under a name no other run looks at, then renamed into view: a run counting the others never
    # finds this file unlocked (and takes it for a dead run's)
    staging = folder / f"{os.getpid()}.starting"
    handle = staging.open("w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # our own new file: never contended
    staging.replace(folder / f"{os.getpid()}.run")
    _held = handle


def active_runs() -> int:
    """How many registered runs are alive (their lock held); files of dead ones are removed."""
    import fcntl

    alive = 0
    for path in runs_folder().glob("*.run"):
        if _held is not None and path.name == f"{os.getpid()}.run":
            alive += 1
            continue
        try:
            with path.open("r") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive += 1  # its process holds it: a live run
                    continue
                path.unlink(missing_ok=True)  # we got the lock: its process is gone
        except FileNotFoundError:
            continue
    return max(alive, 1)


def fair_threads(cores: int, runs: int) -> int:
    """Torch threads for one of ``runs`` runs sharing ``cores`` cores (at least 1)."""
    return max(1, cores // max(1, runs))


def apply() -> int:
    """Set torch's threads to this run's share now, and return it (torch's own count where unmanaged)."""
    if not managed() or _held is None:
        return torch.get_num_threads()
    threads = fair_threads(cpu_cores(), active_runs())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads

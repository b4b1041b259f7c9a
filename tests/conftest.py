"""Test isolation: every session gets its own Prefect home and never talks to a configured server.

Set before Prefect is imported anywhere, since Prefect reads its settings at import time. Flow tests
in this process and the ``digitflow`` commands tests start share the session's one local Prefect
server (flows/local_server.py): it starts once, not once per command.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="digitflow-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)  # never a user's real server
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their store explicitly
os.environ["DIGITFLOW_PREFECT_SERVER_IDLE"] = "60"  # outlives the gaps between commands, not the session


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist (``make test``: two processes), each worker's torch and every command it starts
    get the worker's share of the cores: ``OMP_NUM_THREADS``, set before torch is imported, as a user who
    shares a machine would set it. Torch's default, a thread per core in each of two busy processes, left
    their OpenMP threads spinning for each other: the suite took 8 min against 6 min 54 s with this (2 cores),
    and its real-data runs 2-3x their time alone. A run's own sharing (digitflow.training.cpu_share) steps
    aside for the variable; its tests set and clear it themselves. One process (TEST_WORKERS=0): untouched."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    # cpu_share.USER_THREAD_SETTINGS, spelt out: importing that module would import torch before this runs
    if workers > 1 and not any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_share_the_cores_among_workers()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytest_collection_modifyitems(session, config, items) -> None:
    """Put the test files with real-data runs (marked ``slow``: the longest, up to a minute and a half each)
    first, each file's tests together and in their order; then start the session's local Prefect server as
    soon as a collected test needs it, without waiting: its start (10 s or so: a new database) overlaps the
    tests that come first.

    ``make test`` hands whole files to its two workers in this order (``--dist loadscope
    --no-loadscope-reorder``), so the long files start first and the many short ones even out the ends:
    in pytest-xdist's default order one worker ran 393 s of tests and the other 342 s.
    """
    long_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in long_files)  # stable: each file's tests keep their order
    if any("prefect_server" in getattr(item, "fixturenames", ()) for item in items):
        from flows import local_server

        local_server.find_or_start(local_server.prefect_home() / "digitflow-server", lease=os.getpid())


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """The session's local Prefect server (SQLite in the session's PREFECT_HOME), for flows run in this
    process and the commands it starts (PREFECT_API_URL); stopped at the end. Its API url."""
    from flows import local_server

    server = local_server.use_local_server()
    assert server is not None, "conftest removed PREFECT_API_URL: the local server should be used"
    server.wait_ready()
    yield os.environ["PREFECT_API_URL"]
    _drain_prefect()  # the logs and events still queued, before their server goes (as prefect_test_harness does)
    local_server.stop(server.folder)


def _drain_prefect() -> None:
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            logs = APILogWorker.instance().drain()
            if inspect.isawaitable(logs):
                await logs
        except RuntimeError:  # never started
            pass
        events = EventsWorker.drain_all()
        if inspect.isawaitable(events):
            await events

    run_coro_as_sync(drain())


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh SQLite MLflow store for one test; returns its tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:  # a failed test must not leak an active run into the next
        mlflow.end_run()


@pytest.fixture
def shared_data() -> Path:
    """The official files in ../shared/data; skips, saying why, where that folder is absent."""
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (see docs/data.md: where files go, and offline use)")
    return SHARED_DATA


@pytest.fixture
def command(capsys, monkeypatch):
    """``command("run", "--epochs", "0")`` runs ``digitflow run --epochs 0`` in this process (a
    subprocess per case costs seconds of imports; each test file keeps one case as a real command):
    its exit code, stdout and stderr. Fails the test if the command got as far as starting a flow."""
    from flows.cli import main, options

    def refuse(*args, **kwargs):
        raise AssertionError("the command started a flow; it should have refused its options first")

    monkeypatch.setattr(options, "use_local_server", refuse)

    def run(*args: str) -> tuple[int | str | None, str, str]:
        code: int | str | None
        try:
            code = main(list(args))
        except SystemExit as exit_info:
            code = exit_info.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

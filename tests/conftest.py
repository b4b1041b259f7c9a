"""Test isolation: every session gets its own Prefect home and never talks to a configured server.

Set before Prefect is imported anywhere, since Prefect reads its settings at import time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="digitflow-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)  # never a user's real server
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their store explicitly

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite in the session's PREFECT_HOME) for all flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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

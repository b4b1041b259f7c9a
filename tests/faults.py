"""Faults injected into MLflow for tests: a tracking server that goes away mid-run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore


class LostServer:
    """Fault injection: while ``down``, the store's writes and artifact uploads fail as a refused
    connection does (MLflow's retries already spent)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, down_after: Callable[..., bool] | None = None) -> None:
        self.down = False
        self.down_after = down_after  # called with each store call's arguments; True: the server goes down after it
        self.calls_while_down = 0
        for name in ("log_batch", "set_tag", "update_run_info", "create_run", "log_metric", "log_param"):
            monkeypatch.setattr(SqlAlchemyStore, name, self._faulty(getattr(SqlAlchemyStore, name)))
        monkeypatch.setattr(LocalArtifactRepository, "log_artifact", self._faulty(LocalArtifactRepository.log_artifact))

    def _faulty(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.calls_while_down += 1
                cause = requests.ConnectionError("[Errno 111] Connection refused")
                raise MlflowException("API request to http://127.0.0.1:5000 failed: Max retries exceeded") from cause
            result = method(*args, **kwargs)
            if self.down_after is not None and self.down_after(*args, **kwargs):
                self.down = True
            return result

        return call

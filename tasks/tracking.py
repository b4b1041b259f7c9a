"""MLflow plumbing shared by the tasks: where the store is, runs, tags, figures.

The default store lives in the project's ``mlflow/`` folder (SQLite database + artifact folder, both
git-ignored). ``MLFLOW_TRACKING_URI`` overrides it, e.g. to point at a shared tracking server.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
from matplotlib.figure import Figure
from mlflow.entities import RunStatus
from prefect.exceptions import TerminationSignal

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STORE_DIR = PROJECT_ROOT / "mlflow"
DEFAULT_EXPERIMENT = "digitflow"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{STORE_DIR / 'mlflow.db'}"


def setup_tracking(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; returns its id.

    A new experiment on a local SQLite store (the default ``mlflow/mlflow.db`` or any other) keeps its
    artifacts in an ``artifacts`` folder beside the database, so the two sit side by side; a tracking
    server decides that itself.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    local_store = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None
    if local_store is not None:
        local_store.mkdir(parents=True, exist_ok=True)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = None
        if local_store is not None:  # artifacts beside the database, never in the cwd
            (local_store / "artifacts").mkdir(exist_ok=True)
            location = (local_store / "artifacts").as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def tracked_run(**start_run: Any) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run(**start_run)`` that ends KILLED when a signal interrupts the body (Ctrl-C,
    SIGTERM: ``KeyboardInterrupt``, Prefect's ``TerminationSignal``), FAILED if it raises, else FINISHED."""
    with mlflow.start_run(**start_run) as run:
        try:
            yield run
        except (KeyboardInterrupt, TerminationSignal):
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))  # the with-block then leaves it alone
            raise


@contextlib.contextmanager
def child_run(name: str, parent_run_id: str | None, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A nested MLflow run under ``parent_run_id`` (one per task); ends FAILED if the body raises,
    KILLED if a signal interrupts it."""
    with tracked_run(run_name=name, nested=True, parent_run_id=parent_run_id, tags=tags) as run:
        yield run


def git_commit() -> str:
    """The checked-out commit of the project (with ``-dirty`` if it has local changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torch_requirement() -> str:
    """The pip requirement a logged model needs: this exact torch release (without the local +cuXXX tag)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def log_figure(figure: Figure, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and free it."""
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_json(data: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as an artifact."""
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)


def log_confusion(confusion, classes: list[str], artifact_dir: str, title: str) -> None:
    """A confusion matrix as a PNG heat map and a CSV table (rows = true, columns = predicted)."""
    import pandas as pd

    from digitflow.plots import confusion_matrix_figure

    table = pd.DataFrame(
        confusion.numpy(), index=[f"true_{c}" for c in classes], columns=[f"pred_{c}" for c in classes]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "confusion_matrix.csv"
        table.to_csv(path)
        mlflow.log_artifact(str(path), artifact_dir)
    log_figure(confusion_matrix_figure(confusion, classes, title), f"{artifact_dir}/confusion_matrix.png")


def ui_url() -> str:
    """The MLflow UI for the store in use: the tracking server itself, or ``make ui``'s local address
    (``mlflow/ui.sh``: 127.0.0.1, port ``$MLFLOW_PORT`` or 5000)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"


def ui_command() -> str:
    """How to open that UI: ``make ui`` for the project's store, else the store's own server."""
    uri = tracking_uri()
    if uri == f"sqlite:///{STORE_DIR / 'mlflow.db'}":
        return "make ui"
    if uri.startswith(("http://", "https://")):
        return "open the tracking server"
    return f"mlflow ui --backend-store-uri {uri}"


def run_url(run_id: str, experiment_id: str) -> str:
    """Link to a run in the MLflow UI (see :func:`ui_url`)."""
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"

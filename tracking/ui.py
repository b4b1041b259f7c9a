"""Links and commands that open the MLflow UI on the store a run was written to, in its model-training mode."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tracking.store import DEFAULT_PORT, EXPERIMENT_MODE_QUERY, STORE_DIR, tracking_uri


def ui_url() -> str:
    """The MLflow UI for the store in use: the tracking server itself, or ``make ui``'s local address
    (``mlflow/ui.sh``: 127.0.0.1, port ``$MLFLOW_PORT`` or 5000)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT') or DEFAULT_PORT}"


SERVER_UI = "open the tracking server"  # what ui_command says for a tracking server: it serves its own UI


def ui_command() -> str:
    """How to open that UI on the store in use: ``make ui`` (``mlflow/ui.sh``), given the store and
    the port when they are not the defaults; for a tracking server, the server itself."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return SERVER_UI
    env = {}
    if uri != f"sqlite:///{STORE_DIR / 'mlflow.db'}":
        if uri.startswith("sqlite:///"):  # absolute, so the command works from any directory
            uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
        env["MLFLOW_TRACKING_URI"] = uri
    if (os.environ.get("MLFLOW_PORT") or DEFAULT_PORT) != DEFAULT_PORT:
        env["MLFLOW_PORT"] = os.environ["MLFLOW_PORT"]
    return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in env.items()), "make ui"])


def open_ui_line(command: str, url: str) -> str:
    """The summary's last line: the command that serves the UI (:func:`ui_command`), then the run's link;
    a tracking server serves its own UI, so for one only the link."""
    if command == SERVER_UI:
        return f"open the UI: {url}"
    return f"open the UI: {command}, then {url}"


def run_url(run_id: str, experiment_id: str) -> str:
    """Link to a run in the MLflow UI (see :func:`ui_url`), in its model-training mode."""
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}?{EXPERIMENT_MODE_QUERY}"

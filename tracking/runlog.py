"""Logging to the active MLflow run that loses nothing when the tracking server goes away mid-run.

The functions here have mlflow's names and arguments (``log_metrics``, ``log_params``, ``set_tags``,
``log_artifact``, ...), and the tasks and flows call them instead of mlflow's. While the tracking
server answers, each is mlflow's own call. MLflow itself retries a request the server does not answer
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7 by default, with exponential backoff: 4 minutes on a refused
connection here). When a call still fails for want of a connection, the server counts as lost for the
rest of this process: that call and every later one are written to disk instead, under ``<kept dir>/<run id>/``
(``metrics.jsonl``, ``params.jsonl``, ``tags.jsonl``, ``artifacts/``, and ``run.json`` with the run's
final status), without waiting on the server again, so training goes on at full speed. When the run
ends, :func:`tracking.runs.tracked_run` raises :class:`TrackingLostError`, whose one line names the folder;
``digitflow replay`` logs a kept folder into the server once it is back (:func:`replay`).

Only a lost connection is kept this way. Any other MLflow error (a bad parameter value, a run that does
not exist) is raised as it is; a SQLite store has no server to lose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import requests
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag

from digitflow.errors import DigitflowError
from tracking.races import retried_on_race

DEFAULT_KEPT_DIR = Path("outputs") / "unlogged"

_state_lock = threading.Lock()
_kept_dir = DEFAULT_KEPT_DIR
_lost: str | None = None  # why the server counts as lost (its first failure, one line); None while it answers
_kept_runs: set[str] = set()  # the runs of this process that kept something (not a folder an earlier one left)


class TrackingLostError(DigitflowError):
    """The tracking server stopped answering during a run; what it did not take is kept on disk."""


def keep_in(folder: str | Path) -> None:
    """Keep what cannot be logged under ``folder`` (default ``outputs/unlogged``; the flows pass their
    ``--output-dir``'s ``unlogged``)."""
    global _kept_dir
    _kept_dir = Path(folder)


def lost() -> str | None:
    """Why the tracking server counts as lost in this process, or None while it answers."""
    return _lost


def reset() -> None:
    """Forget a lost server (a new flow run in the same process tries the server again)."""
    global _lost
    with _state_lock:
        _lost = None
        _kept_runs.clear()


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's client failing to reach a tracking server: an ``MlflowException`` caused
    by a request that got no answer (refused, reset, timed out, or 5xx until MLflow's retries ran out).
    An error the server answered with is not one, nor is a connection error of anything but MLflow's
    client (Prefect's API, a worker), nor any error of a SQLite store (SQLAlchemy's, never requests')."""
    seen: BaseException | None = exc
    from_mlflow = False
    for _ in range(20):  # the chain of causes, bounded
        if seen is None:
            return False
        from_mlflow = from_mlflow or isinstance(seen, mlflow.MlflowException)
        if from_mlflow and isinstance(
            seen, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError, ConnectionError)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def mark_lost(exc: BaseException) -> None:
    """Count the tracking server as lost from now on, because of ``exc``."""
    global _lost
    with _state_lock:
        if _lost is not None:
            return
        _lost = f"{mlflow.get_tracking_uri()}: {_first_line(exc)}"  # http://host:5000: [Errno 111] Connection refused
    logging.getLogger("digitflow.tracking").warning(
        "the tracking server %s stopped answering; the run goes on and what it cannot log is kept in %s",
        mlflow.get_tracking_uri(),
        _kept_dir.resolve(),
    )


def _first_line(exc: BaseException) -> str:
    """Why a request failed, in a few words: the innermost cause (``[Errno 111] Connection refused``,
    ``timed out``) rather than MLflow's paragraph around it."""
    innermost = exc
    for _ in range(20):
        cause = innermost.__cause__ or innermost.__context__
        if cause is None:
            break
        innermost = cause
    text = str(innermost).strip() or type(innermost).__name__
    text = text.splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def kept_folder(run_id: str) -> Path:
    """Where what run ``run_id`` could not log is kept."""
    return _kept_dir / run_id


def kept(run_id: str) -> bool:
    """Whether this process kept anything of run ``run_id`` on disk."""
    return run_id in _kept_runs


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise mlflow.MlflowException("no active MLflow run to log to")
    return run.info.run_id


def _folder(run_id: str) -> Path:
    folder = kept_folder(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    _kept_runs.add(run_id)
    info = folder / "run.json"
    if not info.exists():
        _write_json(info, {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri(), "lost": _lost})
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _append(run_id: str, name: str, rows: list[dict[str, Any]]) -> None:
    with _state_lock, (_folder(run_id) / name).open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _guarded(call: Callable[[], Any], keep: Callable[[str], None]) -> None:
    """``call()`` while the server answers; else (or if it fails for want of a connection) ``keep(run_id)``."""
    run_id = _active_run_id()
    if _lost is None:
        try:
            call()
            return
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            mark_lost(exc)
    keep(run_id)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """``mlflow.log_metrics``, kept on disk if the server is lost."""
    timestamp = int(time.time() * 1000)
    rows = [{"key": k, "value": float(v), "step": step or 0, "timestamp": timestamp} for k, v in metrics.items()]
    _guarded(lambda: mlflow.log_metrics(metrics, step=step), lambda run_id: _append(run_id, "metrics.jsonl", rows))


def log_metric(key: str, value: float, step: int | None = None) -> None:
    """``mlflow.log_metric``, kept on disk if the server is lost."""
    log_metrics({key: value}, step=step)


def log_params(params: dict[str, Any]) -> None:
    """``mlflow.log_params``, kept on disk if the server is lost."""
    rows = [{"key": k, "value": str(v)} for k, v in params.items()]
    _guarded(lambda: mlflow.log_params(params), lambda run_id: _append(run_id, "params.jsonl", rows))


def log_param(key: str, value: Any) -> None:
    """``mlflow.log_param``, kept on disk if the server is lost."""
    log_params({key: value})


def set_tags(tags: dict[str, Any]) -> None:
    """``mlflow.set_tags``, kept on disk if the server is lost."""
    rows = [{"key": k, "value": str(v)} for k, v in tags.items()]
    _guarded(lambda: mlflow.set_tags(tags), lambda run_id: _append(run_id, "tags.jsonl", rows))


def set_tag(key: str, value: Any) -> None:
    """``mlflow.set_tag``, kept on disk if the server is lost."""
    set_tags({key: value})


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    """``mlflow.log_artifact``, copied under ``artifacts/`` if the server is lost."""

    def keep(run_id: str) -> None:
        dest = _folder(run_id) / "artifacts" / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{Path(local_path).name}.tmp"
        shutil.copyfile(local_path, tmp)
        tmp.replace(dest / Path(local_path).name)

    _guarded(lambda: mlflow.log_artifact(str(local_path), artifact_path), keep)


def log_model(name: str, log: Callable[[], Any], save: Callable[[Path], None]) -> None:
    """A model logged by ``log()`` (``mlflow.pytorch.log_model(..., name=name)``); if the server is lost,
    ``save(path)`` (``mlflow.pytorch.save_model(..., path=path)``) writes it under the kept run's
    ``artifacts/<name>`` instead, which replay uploads as that folder: ``runs:/<run id>/<name>`` loads it."""

    def keep(run_id: str) -> None:
        dest = _folder(run_id) / "artifacts" / name
        if dest.exists():
            shutil.rmtree(dest)
        save(dest)

    _guarded(log, keep)


@contextlib.contextmanager
def _artifact_file(artifact_file: str) -> Iterator[Path]:
    """A temporary path named as ``artifact_file``'s last part, logged as that artifact after the body writes it."""
    parent, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        yield path
        log_artifact(path, parent or None)


def log_text(text: str, artifact_file: str) -> None:
    """``mlflow.log_text``, kept on disk if the server is lost."""
    with _artifact_file(artifact_file) as path:
        path.write_text(text)


def log_json(data: Any, artifact_file: str) -> None:
    """A JSON-serialisable object as an artifact."""
    log_text(json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)


def log_figure(figure: Figure, artifact_file: str) -> None:
    """A matplotlib figure as an artifact (PNG, or whatever ``artifact_file``'s suffix says); frees it."""
    try:
        with _artifact_file(artifact_file) as path:
            figure.savefig(path)
    finally:
        plt.close(figure)


def log_image(image: Any, artifact_file: str) -> None:
    """An image (numpy array, HxW or HxWxC, uint8 or float in [0, 1]) as a PNG artifact."""
    import numpy as np
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    with _artifact_file(artifact_file) as path:
        Image.fromarray(array.squeeze()).save(path)


def log_input(dataset: Any, context: str) -> None:
    """``mlflow.log_input``, tried again when another run logged the same dataset to the same experiment at
    the same moment (:mod:`tracking.races`: on PostgreSQL, in the team setup, ``UniqueViolation ... dataset_pk``);
    the next try finds the dataset the other run made and links it to this run."""
    retried_on_race(lambda: mlflow.log_input(dataset, context=context), table="dataset")


def _leave_run() -> None:
    """Take the active run off MLflow's stack of active runs without asking the server to end it: what
    ``mlflow.end_run`` does before its server call, which on a lost server would wait out every retry.
    MLflow has no public call for this; the stack is ``mlflow.tracking.fluent``'s (MLflow 3.17)."""
    from mlflow.environment_variables import MLFLOW_RUN_ID
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack:
        MLFLOW_RUN_ID.unset()
        stack.pop()


def end_run(run_id: str, status: str) -> None:
    """``mlflow.end_run(status)`` for run ``run_id`` if it is still the active run (nothing if it was
    ended already); when the server is lost (before or by this call) the status is kept with the run's
    other unlogged data instead."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    if _lost is None:
        try:
            mlflow.end_run(status)
            return
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            mark_lost(exc)
    else:
        _leave_run()
    folder = _folder(run_id)
    info = json.loads((folder / "run.json").read_text())
    _write_json(folder / "run.json", {**info, "status": status, "end_time": int(time.time() * 1000)})


def lost_error(run_id: str | None = None, failure: BaseException | None = None) -> TrackingLostError:
    """The one-line error for a run (``run_id``; None: one that could not start) that lost the tracking
    server; ``failure``: what the run itself failed with, when that was not the lost server."""
    what = f"run {run_id} and the runs in it" if run_id else "the runs before this one"
    failed = ""
    if failure is not None and not is_connection_failure(failure) and not isinstance(failure, TrackingLostError):
        failed = f"; the run itself failed: {type(failure).__name__}: {_first_line(failure)}"
    return TrackingLostError(
        f"lost the tracking server ({_lost}){failed}; what {what} could not log is kept in "
        f"{_kept_dir.resolve()}: `digitflow replay {_kept_dir}` logs it once the server is back, and a rerun "
        "with --resume goes on from the last checkpoint"
    )


def replay(folder: str | Path, client: mlflow.MlflowClient | None = None) -> dict[str, int]:
    """Log what one kept run folder holds (see the module docstring) into its run on the tracking server
    in use, set the run's final status if it was kept, and delete the folder. Returns the counts logged.

    The folder is first renamed (``<run id>.replaying``), so a process still writing to it starts a new
    one rather than appending rows this replay would then delete; a replay that fails leaves the renamed
    folder, and replaying it again is safe (MLflow keeps one copy of a metric logged twice with the same
    step and time, a param logged again with the same value, an artifact overwritten).
    """
    folder = Path(folder)
    if not folder.name.endswith(".replaying"):
        renamed = folder.with_name(folder.name + ".replaying")
        folder.rename(renamed)
        folder = renamed
    client = client or mlflow.MlflowClient()
    info = json.loads((folder / "run.json").read_text())
    run_id = info["run_id"]

    def rows(name: str) -> list[dict[str, Any]]:
        path = folder / name
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows("metrics.jsonl")]
    params = list({r["key"]: Param(r["key"], r["value"]) for r in rows("params.jsonl")}.values())
    tags = list({r["key"]: RunTag(r["key"], r["value"]) for r in rows("tags.jsonl")}.values())
    for i in range(0, len(metrics), 1000):  # log_batch takes at most 1,000 metrics,
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for i in range(0, len(params), 100):  # 100 params
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(tags), 100):  # and 100 tags
        client.log_batch(run_id, tags=tags[i : i + 100])
    artifacts = folder / "artifacts"
    files = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.is_dir() else []
    for path in files:
        parent = path.parent.relative_to(artifacts).as_posix()
        client.log_artifact(run_id, str(path), None if parent == "." else parent)
    if info.get("status"):
        client.set_terminated(run_id, info["status"], end_time=info.get("end_time"))
    shutil.rmtree(folder)
    return {"metrics": len(metrics), "params": len(params), "tags": len(tags), "artifacts": len(files)}

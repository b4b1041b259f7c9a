"""MLflow runs as the flows and tasks use them: a parent run per flow run, a child run per task, ending
KILLED on a signal and FAILED on an error; the Source column; resumed runs; model signatures; figures."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.models import ModelSignature, infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
from prefect.exceptions import TerminationSignal

from tracking import runlog
from tracking.store import PROJECT_ROOT


def source_tags(flow_name: str, deployment_name: str | None = None) -> dict[str, str]:
    """The Source column of a run: the Prefect flow that ran it, not the script that started Python.

    Left to MLflow, it is the basename of ``sys.argv[0]``: ``__main__.py`` or ``digitflow`` from the
    CLI, ``engine.py`` for a deployment run by a worker. A deployment run is a job and is shown as
    ``flow/deployment``; an in-process run (the CLI) is local and shown as the flow's name.
    """
    if deployment_name:
        return {MLFLOW_SOURCE_NAME: f"{flow_name}/{deployment_name}", MLFLOW_SOURCE_TYPE: "JOB"}
    return {MLFLOW_SOURCE_NAME: flow_name, MLFLOW_SOURCE_TYPE: "LOCAL"}


def flow_run_tags() -> dict[str, str]:
    """The tags every flow's parent run carries: the Prefect flow run (id and name), the commit, and the
    Source column (:func:`source_tags`: the flow, or flow/deployment for a deployment's run)."""
    from prefect.runtime import deployment, flow_run

    return {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "git.commit": git_commit(),
        **source_tags(str(flow_run.flow_name), deployment.name),
    }


@contextlib.contextmanager
def tracked_run(**start_run: Any) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run(**start_run)`` that ends KILLED when a signal interrupts the body (Ctrl-C,
    SIGTERM: ``KeyboardInterrupt``, Prefect's ``TerminationSignal``), FAILED if it raises, else FINISHED.

    If the tracking server was lost during the run (:mod:`tracking.runlog`), the run's status is kept on
    disk with what else it could not log, and the run raises :class:`tracking.runlog.TrackingLostError`, whose
    one line names that folder.
    """
    if runlog.lost() is not None:  # no run starts on a lost server (each call would wait out MLflow's retries)
        raise runlog.lost_error()
    run = mlflow.start_run(**start_run)
    run_id = run.info.run_id
    try:
        yield run
    except (KeyboardInterrupt, TerminationSignal):
        runlog.end_run(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        if runlog.is_connection_failure(exc):  # a call that is not kept (the model registry, a search)
            runlog.mark_lost(exc)
        runlog.end_run(run_id, RunStatus.to_string(RunStatus.FAILED))
        if runlog.lost() is not None and not isinstance(exc, runlog.TrackingLostError):
            raise runlog.lost_error(run_id, failure=exc) from exc
        raise
    runlog.end_run(run_id, RunStatus.to_string(RunStatus.FINISHED))
    if runlog.kept(run_id):
        raise runlog.lost_error(run_id)


@contextlib.contextmanager
def child_run(name: str, parent_run_id: str | None, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A nested MLflow run under ``parent_run_id`` (one per task); ends FAILED if the body raises,
    KILLED if a signal interrupts it.

    It names the same source as its parent (see :func:`source_tags`).
    """
    if runlog.lost() is not None:  # the parent's tags below would wait out MLflow's retries first
        raise runlog.lost_error()
    if parent_run_id is not None:
        parent_tags = mlflow.MlflowClient().get_run(parent_run_id).data.tags
        source = {k: parent_tags[k] for k in (MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE) if k in parent_tags}
        tags = {**source, **(tags or {})}
    with tracked_run(run_name=name, nested=True, parent_run_id=parent_run_id, tags=tags) as run:
        yield run


CHECKPOINT_TAG = "digitflow.training.checkpoint"  # on a parent run: the checkpoint file it trains into
RESUMES_TAG = "digitflow.resumes"  # on a parent run started with --resume: the run it continues


def continue_interrupted_runs(checkpoint: str, run_id: str) -> str | None:
    """Before a ``--resume`` run trains: find the run it continues and close what was left open.

    The run continued is the latest earlier parent run in this experiment that trained into the same
    ``checkpoint`` and did not finish (KILLED by Ctrl-C, FAILED, or still RUNNING because its process
    was killed with ``kill -9``, which nothing can catch). Every such run still RUNNING, with its
    RUNNING child runs, is ended KILLED and tagged with the run that took over. Tags ``run_id`` with
    the run it continues and returns that run's id (None when there is none).
    """
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    earlier = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CHECKPOINT_TAG}` = {_literal(checkpoint)} and tags.`mlflow.parentRunId` IS NULL",
        order_by=["attributes.start_time DESC"],
    )
    unfinished = [r for r in earlier if r.info.run_id != run_id and r.info.status != "FINISHED"]
    for run in unfinished:
        if run.info.status != "RUNNING":
            continue
        children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        for stale in [*children, run]:
            if stale.info.status == "RUNNING":
                client.set_tag(stale.info.run_id, "digitflow.ended_by", f"resumed by run {run_id}")
                client.set_terminated(stale.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
    if not unfinished:
        return None
    continued = unfinished[0].info.run_id
    client.set_tag(run_id, RESUMES_TAG, continued)
    return continued


def _literal(value: str) -> str:
    """A string in MLflow's filter syntax, which has no escapes: in double quotes if it holds a single one."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def git_commit() -> str:
    """The checked-out commit of the project (with ``-dirty`` if it has local changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torch_requirement() -> str:
    """The pip requirement a logged model needs: this exact torch release (without the local +cuXXX tag)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def image_signature(model: Any, images: Any) -> tuple[ModelSignature, np.ndarray]:
    """Signature and input example of a model that takes image batches, from two of ``images``.

    The input is declared float64: what numpy and JSON give (a request to ``mlflow models serve``
    is parsed to the signature's dtype), and the model casts it to its own dtype (LeNet.forward).
    MLflow's pyfunc wants the exact declared dtype, so float64 is the one that needs no cast by the
    caller; the batch dimension stays free (-1).
    """
    import torch

    example = images[:2].detach().to("cpu", torch.float64).numpy()
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    return infer_signature(example, output), example


REQUIREMENTS_CHECK = "warn_dependency_requirement_mismatches"  # imported into mlflow.utils.environment, called there


@contextlib.contextmanager
def without_save_checks() -> Iterator[None]:
    """Around ``log_model``: MLflow skips two checks of a model it has just saved that cannot fail for ours.

    - **The serving check.** Given an input example, ``Model.log`` loads the saved model back through pyfunc
      and predicts the example, to check it would serve: 0.3-0.6 s per logged model, twice per run. Our
      models are checked where it matters (the exported files in a torch-only process on real images, the
      trained model by evaluation), and MLflow's own switch (``validate_serving_input=False``) cannot be
      used with the PyTorch flavour, which hands every extra argument to ``torch.save``.
    - **The requirements check.** ``save_model`` compares the pip requirements with the installed packages,
      mapping every installed distribution's files to its modules first (``packages_distributions``: about
      0.6 s, once per process). Ours are ``torch==`` the installed torch (:func:`torch_requirement`) and the
      ``mlflow==`` MLflow adds for itself: installed by construction.

    So this swaps ``mlflow.models.utils._validate_serving_input`` (read by ``Model.log`` at each call) and
    ``mlflow.utils.environment.warn_dependency_requirement_mismatches`` for no-ops while the block runs; the
    example, the signature and the requirements are saved as before.
    """
    import mlflow.models.utils as model_utils
    import mlflow.utils.environment as environment

    serving, requirements = model_utils._validate_serving_input, getattr(environment, REQUIREMENTS_CHECK)
    model_utils._validate_serving_input = lambda model_uri, serving_input: None
    setattr(environment, REQUIREMENTS_CHECK, lambda model_requirements: None)
    try:
        yield
    finally:
        model_utils._validate_serving_input = serving
        setattr(environment, REQUIREMENTS_CHECK, requirements)


def log_confusion(confusion, classes: list[str], artifact_dir: str, title: str) -> None:
    """A confusion matrix as a PNG heat map and a CSV table (rows = true, columns = predicted)."""
    import pandas as pd

    from digitflow.evaluation.plots import confusion_matrix_figure

    table = pd.DataFrame(
        confusion.numpy(), index=[f"true_{c}" for c in classes], columns=[f"pred_{c}" for c in classes]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "confusion_matrix.csv"
        table.to_csv(path)
        runlog.log_artifact(str(path), artifact_dir)
    runlog.log_figure(confusion_matrix_figure(confusion, classes, title), f"{artifact_dir}/confusion_matrix.png")

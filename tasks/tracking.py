"""MLflow plumbing shared by the tasks: where the store is, runs, tags, figures.

The default store lives in the project's ``mlflow/`` folder (SQLite database + artifact folder, both
git-ignored). ``MLFLOW_TRACKING_URI`` overrides it, e.g. to point at a shared tracking server.

What a person sees in the MLflow UI is decided here too: the experiment's kind and description,
what a parent run is called, the Source column, and the links and command that open the UI on the
store a run was written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
from prefect.exceptions import TerminationSignal

from digitflow.config import RunConfig, flatten
from digitflow.errors import DigitflowError
from digitflow.models import LeNet
from tasks import runlog

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STORE_DIR = PROJECT_ROOT / "mlflow"
DEFAULT_EXPERIMENT = "digitflow"
DEFAULT_PORT = "5000"  # mlflow/ui.sh's, unless $MLFLOW_PORT says otherwise

# The experiment kind MLflow's UI knows the experiment by: "custom_model_development" is model
# training ("genai_development" is GenAI apps and agents). See EXPERIMENT_MODE_QUERY for what the UI
# of MLflow 3.17 actually switches on.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI picks its GenAI or Model training mode from its sidebar switch, not from the tag:
# the ``workflowType`` query parameter of the page, else the browser's last choice, else "genai"
# (server/js/build/static/js/main.*.js: the hook that reads the tag is behind a flag that is on and
# returns the switch's value instead). So every link to the UI asks for the model-training mode.
EXPERIMENT_MODE_QUERY = "workflowType=machine_learning"
# sha256 of the description digitflow last wrote, so a description edited in the UI is left alone
NOTE_DIGEST_TAG = "digitflow.note_sha256"


def unwrap(markdown: str) -> str:
    """Join the lines of each paragraph and list item: MLflow's UI shows every newline of a description
    as a line break, so text wrapped for the source would break mid-sentence on the page."""
    out: list[str] = []
    for line in markdown.strip().splitlines():
        if out and out[-1] and line.strip() and not line.startswith("- "):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out) + "\n"


EXPERIMENT_DESCRIPTION = unwrap("""\
**digitflow**: LeNet digit classifiers trained by the Prefect flow `digitflow-pipeline` (`digitflow run`, or a
deployment run by a worker). One parent run per flow run, named after what it did: the options that differ
from the defaults (`lr=0.01 augment=none`, `seed=1`, ...), then model, training split and epochs
(`· LeNet mnist:train epochs=6`); drag the edge of the Run Name column to read it whole. The Prefect flow-run
name is the tag `prefect.flow_run_name`. Each task is a child run: the `+` beside a parent opens them.

To compare runs, add these columns (*Columns* above the table):

- Metrics: `test/accuracy`, `test/loss`, `cross/usps/accuracy` (one `cross/<dataset>/accuracy` per cross-domain target)
- Parameters: `data.train`, `train.epochs`, `train.optimizer.name`, `train.optimizer.kwargs.lr`, `train.seed`,
  `train.augment.affine`
- Tags: `prefect.flow_run_name`, `git.commit`

The exported TorchScript model of each run is a version of the registered model `digitflow-lenet`
(*Models*; the newest has the alias `candidate`).
""")


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{STORE_DIR / 'mlflow.db'}"


class TrackingError(DigitflowError):
    """The tracking store cannot be used (a server that does not answer, say): one line, no traceback."""


def setup_tracking(
    experiment: str = DEFAULT_EXPERIMENT,
    description: str = EXPERIMENT_DESCRIPTION,
    *,
    output_dir: str | Path = "outputs",
) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; returns its id.

    What a run cannot log because its tracking server is lost mid-run is kept under
    ``output_dir/unlogged`` (:mod:`tasks.runlog`).

    A new experiment on a local SQLite store (the default ``mlflow/mlflow.db`` or any other) keeps its
    artifacts in an ``artifacts`` folder beside the database, so the two sit side by side; a tracking
    server decides that itself.

    Safe when several runs start at once on a store that does not exist yet: on SQLite the schema and
    the experiment are created by one of them, under a file lock beside the database, while the others
    wait (MLflow creates a new store's schema on first use, and three processes doing that at once
    failed in alembic and SQLAlchemy). A tracking server that does not answer is a one-line
    :class:`TrackingError`, before anything is logged.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    # MLflow prints its own link for every run it ends ("View run ... at"), without the model-training
    # mode the UI needs; the summaries print ours
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    runlog.reset()
    runlog.keep_in(Path(output_dir) / "unlogged")
    local_store = sqlite_folder(uri)
    if local_store is None:
        problem = server_problem(uri)
        if problem:
            raise TrackingError(problem)
        experiment_id = _experiment_id(experiment, location=None)
    else:
        local_store.mkdir(parents=True, exist_ok=True)
        with store_lock(local_store):
            _open_stores()
            location = None
            if mlflow.get_experiment_by_name(experiment) is None:  # artifacts beside the database, never in the cwd
                (local_store / "artifacts").mkdir(exist_ok=True)
                location = (local_store / "artifacts").as_uri()
            experiment_id = _experiment_id(experiment, location)
    describe_experiment(experiment_id, description)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///`` store (None for any other store)."""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(folder: Path, name: str = "store", timeout_s: float = 300) -> Iterator[None]:
    """An exclusive lock on a local store, across processes (a file ``.digitflow-<name>.lock`` in its
    folder): creating the schema, and promotions, which read and then move an alias."""
    from filelock import FileLock

    with FileLock(folder / f".digitflow-{name}.lock", timeout=timeout_s):
        yield


def _open_stores() -> None:
    """Open the tracking and model-registry stores once, which creates (or upgrades) a SQLite
    store's schema; MLflow keeps them open for the rest of the process."""
    client = mlflow.MlflowClient()
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


def _experiment_id(name: str, location: str | None) -> str:
    """The id of experiment ``name``, created (with artifact ``location``) if it does not exist; a run
    that starts at the same moment on a tracking server and creates it first is not an error."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(mlflow.create_experiment(name, artifact_location=location))
    except MlflowException:
        found = mlflow.get_experiment_by_name(name)  # created in between by another run: use it
        if found is None:
            raise
        return str(found.experiment_id)


def server_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """One line saying why the tracking server at ``uri`` cannot be used, or None when it answers
    (its ``/health`` endpoint). Checked before a run starts, so it fails before any training."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            response.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return (
            f"the MLflow tracking server at {uri} cannot be reached ({reason}); start it (make serve) "
            "or point MLFLOW_TRACKING_URI at one that runs"
        )
    return None


def describe_experiment(experiment_id: str, description: str = EXPERIMENT_DESCRIPTION) -> None:
    """Mark the experiment as model training and give it ``description`` (the classifier's
    :data:`EXPERIMENT_DESCRIPTION` by default; the GAN flow has its own), new or old.

    The description (the ``mlflow.note.content`` tag) is written when there is none, or when it is
    the one digitflow wrote last (so a newer text replaces it); one edited in the UI stays as it is.
    """
    client = mlflow.MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    note = tags.get(MLFLOW_RUN_NOTE)
    ours = note is None or not note.strip() or _digest(note) == tags.get(NOTE_DIGEST_TAG)
    if ours and note != description:
        client.set_experiment_tag(experiment_id, MLFLOW_RUN_NOTE, description)
        client.set_experiment_tag(experiment_id, NOTE_DIGEST_TAG, _digest(description))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# What a run name draws on: what was trained and tested. It leaves out where things are and how the
# run was carried out (paths, offline, resume, device: the train run's tags say which device and precision).
_NAME_KEYS = ("train.", "data.test", "data.targets", "data.target_preprocess", "export.mode")
_NAME_MAX = 240  # MLflow keeps run names up to 250 characters


def parent_run_name(config: RunConfig, defaults: RunConfig | None = None) -> str:
    """What a pipeline run did, for the runs list: ``lr=0.01 augment=none · LeNet mnist:test[:8000] epochs=1``.

    Each option that changes what is trained or tested and differs from ``defaults`` (what the run
    would have had with no option given: the defaults for its training data, device and optimizer;
    ``RunConfig()`` if None), in short ``key=value`` form (training options first), then the model,
    the training split and the epochs. The differences lead because the runs list shows only the first
    twenty-odd characters of a name: that is where two runs must already differ.
    """
    defaults = defaults or RunConfig()
    ours, usual = _name_items(config), _name_items(defaults)
    changed = [f"{key}={value}" for key, value in ours.items() if key != "epochs" and usual.get(key) != value]
    if config.train.optimizer.name != RunConfig().train.optimizer.name and "optimizer" not in "".join(changed):
        changed.insert(0, f"optimizer={config.train.optimizer.name}")
    if config.adapt.method is not None:  # domain adaptation first: it changes the most
        changed.insert(0, f"adapt={config.adapt.method}({config.adapt.target})")
    what = f"{LeNet.__name__} {config.data.train} epochs={config.train.epochs}"
    name = " ".join(changed) + " · " + what if changed else what
    return name if len(name) <= _NAME_MAX else name[: _NAME_MAX - 1] + "…"


def _name_items(config: RunConfig) -> dict[str, str]:
    """The config's result-changing settings as short keys (``lr``, ``scheduler``, ``augment``) -> text."""
    augment = config.train.augment
    chosen = [n for n in ("affine", "elastic") if getattr(augment, n)] + list(augment.extra)
    items: dict[str, str] = {}
    flat = flatten(config)
    for key in sorted(flat, key=lambda k: not k.startswith("train.")):  # stable: training options first
        value = flat[key]
        if not key.startswith(_NAME_KEYS) or key == "train.device" or value == {}:  # {}: no kwargs
            continue
        if key.startswith("train.augment.") and "augment" not in items:  # which ones, as one item
            items["augment"] = "+".join(chosen) or "none"
        if key not in ("train.augment.affine", "train.augment.elastic", "train.augment.extra"):
            items[_short_key(key)] = _short_value(value)
    return items


def _short_key(key: str) -> str:
    for prefix, short in (
        ("train.adversarial.mode", "adv-train"),  # the CLI's names: adv-eps, adv-steps, adv-ramp-epochs
        ("train.adversarial.ramp_epochs", "adv-ramp-epochs"),
        ("train.adversarial.relative_step", "adv-relative-step"),
        ("train.adversarial.", "adv-"),
        ("train.optimizer.kwargs.", ""),
        ("train.optimizer.param_groups.", ""),
        ("train.scheduler.kwargs.", "sched."),
        ("train.augment.", ""),
        ("train.", ""),
        ("data.targets", "target"),
        ("data.target_preprocess", "target-preprocess"),
        ("data.", ""),
        ("export.mode", "export"),
    ):
        if key.startswith(prefix):
            key = short + key[len(prefix) :]
            break
    return key.removesuffix(".name")


def _short_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(_short_value, value)) or "none"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def source_tags(flow_name: str, deployment_name: str | None = None) -> dict[str, str]:
    """The Source column of a run: the Prefect flow that ran it, not the script that started Python.

    Left to MLflow, it is the basename of ``sys.argv[0]``: ``__main__.py`` or ``digitflow`` from the
    CLI, ``engine.py`` for a deployment run by a worker. A deployment run is a job and is shown as
    ``flow/deployment``; an in-process run (the CLI) is local and shown as the flow's name.
    """
    if deployment_name:
        return {MLFLOW_SOURCE_NAME: f"{flow_name}/{deployment_name}", MLFLOW_SOURCE_TYPE: "JOB"}
    return {MLFLOW_SOURCE_NAME: flow_name, MLFLOW_SOURCE_TYPE: "LOCAL"}


@contextlib.contextmanager
def tracked_run(**start_run: Any) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run(**start_run)`` that ends KILLED when a signal interrupts the body (Ctrl-C,
    SIGTERM: ``KeyboardInterrupt``, Prefect's ``TerminationSignal``), FAILED if it raises, else FINISHED.

    If the tracking server was lost during the run (:mod:`tasks.runlog`), the run's status is kept on
    disk with what else it could not log, and the run raises :class:`tasks.runlog.TrackingLostError`, whose
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


CHECKPOINT_TAG = "digitflow.checkpoint"  # on a parent run: the checkpoint file it trains into
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
        runlog.log_artifact(str(path), artifact_dir)
    runlog.log_figure(confusion_matrix_figure(confusion, classes, title), f"{artifact_dir}/confusion_matrix.png")


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

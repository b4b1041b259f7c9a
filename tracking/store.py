"""The MLflow store: where it is, opening it (schema creation under a lock), the experiment and its
description, and whether a tracking server answers.

The default store lives in the project's ``mlflow/`` folder (SQLite database + artifact folder, both
git-ignored). ``MLFLOW_TRACKING_URI`` overrides it, e.g. to point at a shared tracking server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from digitflow.errors import DigitflowError
from tracking import credentials, runlog

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
**digitflow**: digit classifiers (LeNet, or the `--model` a run names) trained by the Prefect flow
`digitflow-pipeline` (`digitflow run`, or a deployment run by a worker). One parent run per flow run, named after
what it did: the options that differ from the defaults (`lr=0.01 augment=none`, `seed=1`, ...), then model, training
split and epochs (`· LeNet mnist:train epochs=6`); drag the edge of the Run Name column to read it whole. The
Prefect flow-run name is the tag `prefect.flow_run_name`. Each task is a child run: the `+` beside a parent opens
them.

To compare runs, add these columns (*Columns* above the table):

- Metrics: `test/accuracy`, `test/loss`, `cross/usps/accuracy` (one `cross/<dataset>/accuracy` per cross-domain target)
- Parameters: `data.train`, `train.model`, `train.epochs`, `train.optimizer.name`, `train.optimizer.kwargs.lr`,
  `train.seed`, `train.augment.affine`
- Tags: `prefect.flow_run_name`, `git.commit`

The exported TorchScript model of each run is a version of the registered model `digitflow-lenet`
(`digitflow-<model>` for another `--model`; *Models*; the newest has the alias `candidate`).
""")


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlflow.db``. A password
    in it is moved into MLflow's credential variables first (:mod:`tracking.credentials`), so what this
    returns can be printed and logged."""
    credentials.split_uri_credentials()
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
    ``output_dir/unlogged`` (:mod:`tracking.runlog`).

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
        problem = server_problem(uri, experiment=experiment)
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


def server_problem(uri: str, timeout_s: float = 5.0, experiment: str | None = None) -> str | None:
    """One line saying why the tracking server at ``uri`` cannot be used, or None when it answers
    (its ``/health`` endpoint) and accepts this user's credentials (a search of experiments: 401 when
    they are missing or wrong) and, given ``experiment``, lets them use it (403 when not granted).
    Checked before a run starts, so it fails before any training; it names what to set, never a value."""
    if not uri.startswith(("http://", "https://")):
        return None
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout_s) as response:
            response.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return (
            f"the MLflow tracking server at {uri} cannot be reached ({reason}); start it (make serve) "
            "or point MLFLOW_TRACKING_URI at one that runs"
        )
    checks = [("/api/2.0/mlflow/experiments/search?max_results=1", "")]
    if experiment:
        query = urllib.parse.urlencode({"experiment_name": experiment})
        checks.append((f"/api/2.0/mlflow/experiments/get-by-name?{query}", f"on experiment {experiment}"))
    for path, what in checks:
        request = urllib.request.Request(base + path, headers=credentials.mlflow_auth_header())
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return credentials.refused_line("MLflow", uri, exc.code, what)
        except (OSError, ValueError):
            return None  # it answered /health: MLflow's own retries and messages take it from here
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

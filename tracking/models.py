"""Models by MLflow URI: a registered version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), a run's
logged model (``runs:/RUN_ID/torchscript-model``), any artifact URI MLflow reads, or a local file or
MLflow model folder, resolved to the one local file that holds the exported model."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from digitflow.errors import ConfigError
from digitflow.fileio import one_line
from tracking.store import tracking_uri

MLFLOW_MODEL_FILE = Path("data") / "model.pth"  # where mlflow.pytorch keeps a logged model, in its folder
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
URI_HINT = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/torchscript-model or an exported .pt/.pt2 file"


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from: the URI as given, its local file and, for a registered model, which version."""

    uri: str
    path: str  # the TorchScript (.pt, MLflow's model.pth) or torch.export (.pt2) file
    name: str | None = None  # registered model name
    version: str | None = None
    run_id: str | None = None  # the run that logged the version

    def params(self) -> dict[str, str]:
        """What a run that uses the model records of it (``model.uri``, ``model.name``, ...)."""
        fields = {"uri": self.uri, "name": self.name, "version": self.version, "run_id": self.run_id}
        return {f"model.{k}": v for k, v in fields.items() if v is not None}


def is_mlflow_uri(uri: str) -> bool:
    """Whether ``uri`` is for MLflow to resolve (a scheme), not a local path."""
    return uri.startswith(("models:/", "runs:/")) or "://" in uri


def resolve_model(uri: str, download_dir: str | Path) -> ModelSource:
    """The local model file of ``uri``: downloaded into ``download_dir`` when MLflow's store is elsewhere
    (a local store's file is used where it is). ConfigError (one line) for a model that is not there."""
    if not is_mlflow_uri(uri):
        return ModelSource(uri, str(model_file(Path(uri), uri)))
    import mlflow  # only for an MLflow URI: a file needs no store (and the CLI checks files without MLflow)
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name = version = run_id = None
    registered = _REGISTERED.match(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars on stderr
    try:
        if registered:
            name = registered["name"]
            found = (
                client.get_model_version_by_alias(name, registered["alias"])
                if registered["alias"]
                else client.get_model_version(name, registered["version"])
            )
            version, run_id = str(found.version), found.run_id
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir))
    except MlflowException as exc:
        raise ConfigError(
            f"no model {uri} in the MLflow store {tracking_uri()} ({one_line(exc).removeprefix('MlflowException: ')}); "
            f"give {URI_HINT}"
        ) from None
    return ModelSource(uri, str(model_file(Path(local), uri)), name, version, run_id)


def model_file(path: Path, uri: str) -> Path:
    """The model file of a local path: the file itself, or an MLflow model folder's ``data/model.pth``."""
    if path.is_file():
        return path
    if (path / "MLmodel").is_file() and (path / MLFLOW_MODEL_FILE).is_file():
        return path / MLFLOW_MODEL_FILE
    what = "an MLflow model folder without data/model.pth" if (path / "MLmodel").is_file() else "no such file"
    raise ConfigError(f"no model at {uri} ({what}); give {URI_HINT}")

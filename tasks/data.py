"""Data tasks: download (retried with backoff) and transform (cached on inputs + file hashes)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from mlflow.data.numpy_dataset import from_numpy
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from digitflow.config import DataConfig
from digitflow.data import DigitDataset, PreparedDataset, fetch, files_digest, load, prepare
from digitflow.data.cache import CACHE_VERSION
from digitflow.data.files import urllib_download
from digitflow.data.framing import frame_images
from digitflow.errors import DownloadError, MissingDataError
from reporting.progress import run_logger
from tracking import runlog
from tracking.runs import child_run


def _network_failure(task, task_run, state) -> bool:
    """Retry only when no mirror could be reached; a corrupt or unreadable local file stays broken."""
    try:
        state.result()
    except DownloadError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is not worth a retry
        return False
    return False


@task(
    name="download",
    task_run_name="download {spec}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2 s, 4 s, 8 s
    retry_jitter_factor=0.5,
    retry_condition_fn=_network_failure,
    cache_policy=NO_CACHE,
)
def download_dataset(spec: str, data_dir: str, offline: bool = False) -> list[str]:
    """Make sure the raw files of ``spec``'s split are in ``data_dir`` and verified; download the missing.

    Retries only make sense with a network: the flow calls this with ``retries=0`` when offline.
    Downloads log their progress every quarter of a file.
    """
    downloader = functools.partial(urllib_download, on_progress=DownloadLog(run_logger()))
    try:
        return [str(p) for p in fetch(spec, data_dir, offline=offline, downloader=downloader)]
    except MissingDataError as exc:
        if in_deployment_run():  # its message names CLI options, which a deployment run cannot use
            raise exc.with_fix(deployment_data_fix(exc)) from None
        raise


DEPLOYMENT_DATA_FIX = (
    "place the official file there, or give the deployment a folder that has it: "
    "set DIGITFLOW_DATA_DIR in the worker's environment, or pass -p data_dir=DIR to prefect deployment run"
)


def deployment_data_fix(exc: MissingDataError) -> str:
    """How to provide a missing file to a deployment's flow run (no command-line options there)."""
    return DEPLOYMENT_DATA_FIX + (", or give the worker a network" if isinstance(exc, DownloadError) else "")


def in_deployment_run() -> bool:
    """Whether this flow run was started from a deployment (by a worker), not by the CLI or a call."""
    from prefect.runtime import deployment

    return deployment.id is not None


class DownloadLog:
    """Progress of downloads as log lines: at each quarter of a file (or every 10 MB if its size is unknown)."""

    def __init__(self, logger) -> None:
        self.logger = logger
        self.next_mark: dict[str, int] = {}

    def __call__(self, url: str, done: int, total: int | None) -> None:
        step = max(total // 4, 1) if total else 10 << 20
        if done >= self.next_mark.get(url, step) or done == total:
            size = f" of {total / 1e6:.1f} MB" if total else ""
            percent = f" ({100 * done // total}%)" if total else ""
            self.logger.info("downloading %s: %.1f MB%s%s", url.rsplit("/", 1)[-1], done / 1e6, size, percent)
            self.next_mark[url] = (done // step + 1) * step


def _prepare_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Cache on the spec, the cache folder and the raw files' content (not their paths or mtimes)."""
    digest = files_digest([Path(p) for p in parameters["raw_files"]])
    key = f"{parameters['spec']}|{Path(parameters['cache_dir']).resolve()}|{digest}|v{CACHE_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()


@task(name="prepare", task_run_name="prepare {spec}", cache_key_fn=_prepare_cache_key, persist_result=True)
def prepare_dataset(
    spec: str, raw_files: list[str], data_dir: str, cache_dir: str, parent_run_id: str | None = None
) -> PreparedDataset:
    """Parse the raw files into cached uint8 tensors (a no-op when the cache has them); log the dataset."""
    prepared = prepare(spec, data_dir, cache_dir, offline=True)
    with child_run(f"prepare {spec}", parent_run_id, tags={"dataset.digest": prepared.digest}):
        runlog.log_params(
            {
                "spec": prepared.spec,
                "num_samples": prepared.num_samples,
                "image_size": "x".join(map(str, prepared.image_size)),
                "digest": prepared.digest,
                # how a user's own files were read: inversion, framing, the seeded hold-out
                **{f"source.{key}": value for key, value in prepared.notes},
            }
        )
        log_dataset_input(load(prepared), context="prepared")
    return prepared


def load_prepared(prepared: PreparedDataset, data_dir: str, cache_dir: str) -> DigitDataset:
    """Load a prepared dataset; re-prepare it if its cache file was removed since the task ran."""
    if not Path(prepared.cache_path).exists():
        prepared = prepare(prepared.spec, data_dir, cache_dir, offline=True)
    return load(prepared)


def adaptation_images(prepared: PreparedDataset, config: DataConfig, device: torch.device | str) -> torch.Tensor:
    """The unlabeled target images of domain adaptation, framed like every target (``model_inputs``);
    their labels are never read."""
    dataset = load_prepared(prepared, config.data_dir, config.cache_dir)
    return frame_images(dataset.images.to(device), config.target_preprocess)


def log_dataset_input(dataset: DigitDataset, context: str) -> None:
    """Record ``dataset`` as an MLflow dataset input of the active run, with its content digest."""
    ds = from_numpy(
        features=dataset.images.numpy(),
        targets=dataset.labels.numpy(),
        name=dataset.spec,
        digest=dataset.digest[:16],
    )
    runlog.log_input(ds, context=context)


def prepare_data(spec: str, data_dir: str, cache_dir: str, offline: bool, parent_run_id: str | None) -> PreparedDataset:
    """Download (when needed and allowed), then transform: the two data tasks in a row."""
    download = download_dataset.with_options(retries=0) if offline else download_dataset
    raw_files = download(spec, data_dir, offline)
    return prepare_dataset(spec, raw_files, data_dir, cache_dir, parent_run_id)

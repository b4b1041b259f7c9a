"""Export task: TorchScript and torch.export files, verified without this project, timed, registered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import RunConfig
from digitflow.data import PreparedDataset
from digitflow.export import (
    compare_latency,
    eager_logits,
    export_program,
    export_torchscript,
    load_export,
    verify_export,
)
from tasks.data import load_prepared, model_inputs
from tasks.progress import run_logger
from tasks.tracking import child_run, torch_requirement
from tasks.train import TrainedModel


@task(name="export", cache_policy=NO_CACHE, persist_result=False)
def export_model(
    trained: TrainedModel,
    data: PreparedDataset,
    config: RunConfig,
    test_metrics: dict[str, float],
    cross_metrics: list[dict[str, float]],
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Export the classifier twice (TorchScript ``.pt``, torch.export ``.pt2``), verify both on real
    held-out images in a fresh Python that imports only torch, time them against eager, log them,
    and register the TorchScript model as a new version of ``config.export.registered_model_name``
    with alias ``config.export.alias``, tagged with the run's test and cross-domain metrics.
    """
    logger = run_logger()
    cfg = config.export
    with child_run("export", parent_run_id) as run:
        out_dir = Path(config.output_dir) / "exports" / (parent_run_id or run.info.run_id)  # the flow run's id
        dataset = load_prepared(data, config.data.data_dir, config.data.cache_dir)
        images, _ = model_inputs(dataset, config.data.target_preprocess, "cpu")
        images = images[: cfg.verify_images]
        reference = eager_logits(trained.model, images)
        mlflow.log_params({"mode": cfg.mode, "verify_images": len(images), "max_abs_diff": cfg.max_abs_diff})

        torchscript = export_torchscript(trained.model, images[:1], out_dir / "lenet.pt", mode=cfg.mode)
        program = export_program(trained.model, images[:1], out_dir / "lenet.pt2")
        metrics: dict[str, float] = {}
        for name, path in (("torchscript", torchscript), ("program", program)):
            check = verify_export(path, images, reference, max_abs_diff=cfg.max_abs_diff)
            metrics[f"export/{name}_max_abs_diff"] = check["max_abs_diff"]
            metrics[f"export/{name}_mismatched_predictions"] = check["mismatched_predictions"]
            logger.info("%s verified on %d images: max |logit diff| %.2e",
                        path.name, check["num_images"], check["max_abs_diff"])
            mlflow.log_artifact(str(path), "export")
        metrics.update(compare_latency(trained.model, torchscript, program, repeats=cfg.latency_repeats))
        mlflow.log_metrics(metrics)

        scripted = load_export(torchscript)
        with _without_pickle_warning():
            info = mlflow.pytorch.log_model(
                scripted, name="torchscript-model",
                serialization_format="pickle",  # the only format MLflow takes for TorchScript
                pip_requirements=[torch_requirement()],
            )
        version = _register(info.model_uri, cfg.registered_model_name, cfg.alias,
                            {**test_metrics, **_headline(cross_metrics)})
        logger.info("registered %s version %s with alias %s", cfg.registered_model_name, version, cfg.alias)

    return {
        "torchscript_path": str(torchscript), "program_path": str(program),
        "model_name": cfg.registered_model_name, "model_version": version, "alias": cfg.alias, **metrics,
    }


@contextlib.contextmanager
def _without_pickle_warning() -> Iterator[None]:
    """Drop MLflow's warning that "pickle" format is unsafe, around logging a TorchScript model only.

    For a ``ScriptModule`` MLflow writes a TorchScript archive (``ScriptModule.save``), not a pickle,
    so the warning does not apply; every other MLflow warning still shows.
    """
    logger = logging.getLogger("mlflow.pytorch")
    only_pickle = _DropMessage("Saving pytorch model by Pickle")
    logger.addFilter(only_pickle)
    try:
        yield
    finally:
        logger.removeFilter(only_pickle)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _headline(cross_metrics: list[dict[str, float]]) -> dict[str, float]:
    """Only ``cross/<dataset>/accuracy`` and ``/loss`` of each target, not the per-class figures."""
    return {k: v for m in cross_metrics for k, v in m.items() if "/class_" not in k}


def _register(model_uri: str, name: str, alias: str, metrics: dict[str, float]) -> str:
    """A new registered version of ``model_uri``, tagged with ``metrics`` and pointed to by ``alias``."""
    version = mlflow.register_model(model_uri, name).version
    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        if "/class_" not in key:
            client.set_model_version_tag(name, version, key, f"{value:.4f}")
    client.set_registered_model_alias(name, alias, version)
    return str(version)

"""Export task: TorchScript and torch.export files, verified without this project, timed, registered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.models import Model
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import ExportConfig, RunConfig
from digitflow.data import PreparedDataset
from digitflow.data.framing import model_inputs
from digitflow.export.exporters import (
    compare_latency,
    eager_logits,
    export_program,
    export_torchscript,
    load_export,
    verify_exports,
)
from reporting import timing
from reporting.progress import run_logger
from tasks.data import load_prepared
from tasks.train import TrainedModel
from tracking import runlog
from tracking.runs import child_run, image_signature, torch_requirement, without_serving_check
from tracking.store import unwrap


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

    The TorchScript model is logged with a signature and an input example (so the registry shows its
    schema and ``mlflow models serve`` takes MLflow's JSON payloads), on the flow's parent run: the
    model version's source run is then the pipeline run, named after what it trained.
    """
    logger = run_logger()
    cfg = config.export
    with child_run("export", parent_run_id) as run:
        out_dir = Path(config.output_dir) / "exports" / (parent_run_id or run.info.run_id)  # the flow run's id
        dataset = load_prepared(data, config.data.data_dir, config.data.cache_dir)
        images, _ = model_inputs(dataset, config.data.target_preprocess, "cpu")
        images = images[: cfg.verify_images]
        reference = eager_logits(trained.model, images)
        runlog.log_params({"mode": cfg.mode, "verify_images": len(images), "max_abs_diff": cfg.max_abs_diff})

        with timing.part("export", "files"):
            torchscript = export_torchscript(trained.model, images[:1], out_dir / "lenet.pt", mode=cfg.mode)
            program = export_program(trained.model, images[:1], out_dir / "lenet.pt2")
        metrics: dict[str, float] = {}
        with timing.part("export", "verification"):  # both files in one torch-only process
            checks = verify_exports([torchscript, program], images, reference, max_abs_diff=cfg.max_abs_diff)
        for name, path, check in (("torchscript", torchscript, checks[0]), ("program", program, checks[1])):
            metrics[f"export/{name}_max_abs_diff"] = check["max_abs_diff"]
            metrics[f"export/{name}_mismatched_predictions"] = check["mismatched_predictions"]
            logger.info(
                "%s verified on %d images: max |logit diff| %.2e", path.name, check["num_images"], check["max_abs_diff"]
            )
            runlog.log_artifact(str(path), "export")
        with timing.part("export", "latency"):
            metrics.update(
                compare_latency(
                    trained.model, torchscript, program, repeats=cfg.latency_repeats, budget_s=cfg.latency_budget_s
                )
            )
        runlog.log_metrics(metrics)

        with timing.part("export", "registration"):
            figures = {**test_metrics, **_headline(cross_metrics)}
            version = _log_and_register(torchscript, images, parent_run_id, figures, cfg)
        logger.info("registered %s version %s with alias %s", cfg.registered_model_name, version, cfg.alias)

    return {
        "torchscript_path": str(torchscript),
        "program_path": str(program),
        "model_name": cfg.registered_model_name,
        "model_version": version,
        "alias": cfg.alias,
        **metrics,
    }


def _log_and_register(
    torchscript: Path, images: torch.Tensor, parent_run_id: str | None, figures: dict[str, float], cfg: ExportConfig
) -> str:
    """Log the TorchScript model on the parent run (signature, input example) and register it as a new
    version of ``cfg.registered_model_name`` with alias ``cfg.alias``, tagged with ``figures``; its version."""
    scripted = load_export(torchscript)
    signature, example = image_signature(scripted, images)
    with _without_pickle_warning(), without_serving_check():  # the verifier checked this file on real images
        info = Model.log(  # mlflow.pytorch.log_model, on the parent run (log_model only takes the active run)
            artifact_path=None,
            name="torchscript-model",
            flavor=mlflow.pytorch,
            run_id=parent_run_id,
            pytorch_model=scripted,
            serialization_format="pickle",  # the only format MLflow takes for TorchScript
            signature=signature,
            input_example=example,
            pip_requirements=[torch_requirement()],
        )
    version = _register(info.model_uri, cfg.registered_model_name, cfg.alias, figures)
    mlflow.MlflowClient().update_model_version(
        cfg.registered_model_name,
        version,
        description=_MODEL_DESCRIPTION.format(mode=cfg.mode, name=cfg.registered_model_name, alias=cfg.alias),
    )
    return version


_MODEL_DESCRIPTION = unwrap("""\
LeNet digit classifier, TorchScript ({mode}). Input: float images `(N, 1, 28, 28)` in `[0, 1]`, a white
digit on black (normalization is inside); output: `(N, 10)` logits. Serve it with
`mlflow models serve -m models:/{name}@{alias} --env-manager local` and POST `{{"inputs": <images as nested lists>}}`
to `/invocations`.
""")


@contextlib.contextmanager
def _without_pickle_warning() -> Iterator[None]:
    """Drop MLflow's warning that "pickle" format is unsafe, around logging a TorchScript model only.

    For a ``ScriptModule`` MLflow writes a TorchScript archive (``ScriptModule.save``), not a pickle,
    so the warning does not apply. Every other warning still shows.
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

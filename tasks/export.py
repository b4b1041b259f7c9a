"""Export task: TorchScript, torch.export and AOTInductor files, verified without this project, timed, registered."""

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
from digitflow.errors import ExportError
from digitflow.export.aoti import export_aoti
from digitflow.export.exporters import (
    compare_latency,
    eager_logits,
    export_program,
    export_torchscript,
    load_export,
    measure_latency,
    verify_exports,
)
from digitflow.export.inputs import INPUT, for_export
from digitflow.export.metadata import ModelMetadata, run_metadata
from digitflow.models.factory import model_label, model_name
from reporting import timing
from reporting.progress import run_logger
from tasks.data import load_prepared
from tasks.train import TrainedModel
from tracking import runlog
from tracking.races import retried_on_race
from tracking.runs import child_run, image_signature, torch_requirement, without_save_checks
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
    """Export the classifier in each of ``config.export.formats`` (TorchScript ``lenet.pt``, always;
    torch.export ``lenet.pt2``; AOTInductor ``lenet.aoti.pt2``, whose failure to compile is one warning
    line and keeps the others; another ``--model``'s files are named after it), each taking float pixels
    in [0, 1] (:class:`PixelInput`); a TorchScript or torch.export file that cannot be written is one
    ExportError line saying which and why (:func:`_export_files`). Verify them on
    real held-out images in a fresh Python that imports only torch, time them against eager, log them,
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
        metadata = run_metadata(config.data)  # what digitflow predict reads from the file
        images = images[: cfg.verify_images]
        reference = eager_logits(trained.model, images)
        runlog.log_params(
            {
                "mode": cfg.mode,
                "formats": ",".join(cfg.formats),
                "verify_images": len(images),
                "max_abs_diff": cfg.max_abs_diff,
                **({"aoti_max_abs_diff": cfg.aoti_max_abs_diff} if "aoti" in cfg.formats else {}),
            }
        )

        exportable = for_export(trained.model)  # every file takes float pixels in [0, 1] (PixelInput)
        files: dict[str, Path] = {}  # metric name -> file, in the order written
        stem = model_name(config.train.model)  # lenet.pt, lenet.pt2, lenet.aoti.pt2; another model: <name>.pt, ...
        with timing.part("export", "files"):
            files.update(_export_files(exportable, images[:1], out_dir / stem, cfg, metadata))
        if "aoti" in cfg.formats:
            with timing.part("export", "aoti"):
                aoti = _compile_aoti(exportable, images[:1], out_dir / f"{stem}.aoti.pt2")
            if aoti is not None:
                files["aoti"] = aoti
        runlog.log_param("formats_written", ",".join(_FORMAT_OF[name] for name in files))
        metrics: dict[str, float] = {}
        with timing.part("export", "verification"):  # every file in one torch-only process
            limits = [cfg.aoti_max_abs_diff if name == "aoti" else cfg.max_abs_diff for name in files]
            checks = verify_exports(list(files.values()), images, reference, max_abs_diff=limits)
        for (name, path), check in zip(files.items(), checks, strict=True):
            metrics[f"export/{name}_max_abs_diff"] = check["max_abs_diff"]
            metrics[f"export/{name}_mismatched_predictions"] = check["mismatched_predictions"]
            logger.info(
                "%s verified on %d images: max |logit diff| %.2e", path.name, check["num_images"], check["max_abs_diff"]
            )
            runlog.log_artifact(str(path), "export")
        torchscript = files["torchscript"]
        with timing.part("export", "latency"):
            metrics.update(
                compare_latency(
                    trained.model,
                    torchscript,
                    files.get("program"),
                    repeats=cfg.latency_repeats,
                    budget_s=cfg.latency_budget_s,
                )
            )
            if "aoti" in files:
                latency = measure_latency(files["aoti"], repeats=cfg.latency_repeats, budget_s=cfg.latency_budget_s)
                metrics.update({f"export/aoti_ms_b{batch}": ms for batch, ms in latency.items()})
        runlog.log_metrics(metrics)

        with timing.part("export", "registration"):
            figures = {**test_metrics, **_headline(cross_metrics)}
            version = _log_and_register(torchscript, images, parent_run_id, figures, cfg, config.train.model)
        logger.info("registered %s version %s with alias %s", cfg.registered_model_name, version, cfg.alias)

    return {
        **{f"{name}_path": str(path) for name, path in files.items()},  # torchscript_path, program_path, aoti_path
        "model_name": cfg.registered_model_name,
        "model_version": version,
        "alias": cfg.alias,
        **metrics,
    }


_FORMAT_OF = {"torchscript": "torchscript", "program": "export", "aoti": "aoti"}  # metric name -> --export-formats


def _export_files(
    model: torch.nn.Module, example: torch.Tensor, stem: Path, cfg: ExportConfig, metadata: ModelMetadata
) -> dict[str, Path]:
    """``stem.pt`` (TorchScript, always) and ``stem.pt2`` (torch.export, if ``cfg.formats`` has it), by metric
    name, each carrying ``metadata`` (the class names and framing ``digitflow predict`` reads). Each is tried;
    if one fails, one ExportError line says which failed and why (and what the other wrote), so the owner of a
    model that cannot be scripted learns at once whether tracing or torch.export takes it."""
    exports = {
        "torchscript": (
            f"torch.jit.{cfg.mode}",
            lambda: export_torchscript(model, example, stem.with_suffix(".pt"), mode=cfg.mode, metadata=metadata),
        )
    }
    if "export" in cfg.formats:
        exports["program"] = (
            "torch.export",
            lambda: export_program(model, example, stem.with_suffix(".pt2"), metadata=metadata),
        )
    files: dict[str, Path] = {}
    failed: dict[str, ExportError] = {}
    for name, (what, export) in exports.items():
        try:
            files[name] = export()
        except ExportError as exc:
            failed[what] = exc
    if failed:
        hint = " (--export-mode trace may take it)" if "torch.jit.script" in failed else ""
        done = "".join(f"; {exports[name][0]} wrote {path.name}" for name, path in files.items())
        raise ExportError("; ".join(str(exc) for exc in failed.values()) + hint + done)
    return files


def _compile_aoti(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path | None:
    """The AOTInductor package, or None after one warning line saying why it could not be compiled: the run
    keeps its other files, and ``formats_written`` records what was written."""
    try:
        return export_aoti(model, example, path)
    except ExportError as exc:
        run_logger().warning("%s not written, the other formats are kept: %s", path.name, exc)
        runlog.set_tag("export.aoti_error", str(exc))
        return None


def _log_and_register(
    torchscript: Path,
    images: torch.Tensor,
    parent_run_id: str | None,
    figures: dict[str, float],
    cfg: ExportConfig,
    model: str,
) -> str:
    """Log the TorchScript model on the parent run (signature, input example) and register it as a new
    version of ``cfg.registered_model_name`` with alias ``cfg.alias``, tagged with ``figures`` and the
    ``model`` spec; its version."""
    scripted = load_export(torchscript)
    signature, example = image_signature(scripted, images)
    with _without_pickle_warning(), without_save_checks():  # the verifier checked this file on real images
        info = Model.log(  # mlflow.pytorch.log_model, on the parent run (log_model only takes the active run)
            artifact_path=None,
            name="torchscript-model",
            flavor=mlflow.pytorch,
            run_id=parent_run_id,
            pytorch_model=scripted,
            serialization_format="pickle",  # the only format MLflow takes for TorchScript
            signature=signature,
            input_example=example,
            metadata={"input": INPUT, "output": "(N, classes) float logits"},  # beside the signature, in MLmodel
            pip_requirements=[torch_requirement()],
        )
    version = _register(info.model_uri, cfg.registered_model_name, cfg.alias, figures, {"model": model})
    mlflow.MlflowClient().update_model_version(
        cfg.registered_model_name,
        version,
        description=_MODEL_DESCRIPTION.format(
            model=model_label(model), mode=cfg.mode, name=cfg.registered_model_name, alias=cfg.alias
        ),
    )
    return version


_MODEL_DESCRIPTION = unwrap("""\
{model} digit classifier, TorchScript ({mode}). Input: float images `(N, 1, 28, 28)`, pixels in `[0, 1]` (bytes /
255), a white digit on black (normalization is inside); output: `(N, classes)` logits. Serve it with
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


def _register(
    model_uri: str, name: str, alias: str, metrics: dict[str, float], tags: dict[str, str] | None = None
) -> str:
    """A new registered version of ``model_uri``, tagged with ``metrics`` (and ``tags``) and pointed to by
    ``alias``."""
    version = mlflow.register_model(model_uri, name).version
    client = mlflow.MlflowClient()
    for key, text in (tags or {}).items():
        client.set_model_version_tag(name, version, key, text)
    for key, value in metrics.items():
        if "/class_" not in key:
            client.set_model_version_tag(name, version, key, f"{value:.4f}")
    # two runs registering at once both find no alias row and both insert it: the second try moves it
    retried_on_race(lambda: client.set_registered_model_alias(name, alias, version), table="registered_model_alias")
    return str(version)

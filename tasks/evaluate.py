"""Evaluation tasks: the held-out test split, and cross-domain targets (train on one domain, test on another)."""

from __future__ import annotations

import re

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import DataConfig
from digitflow.data import PreparedDataset, parse_spec
from digitflow.data.framing import model_inputs
from digitflow.evaluation.classifier import EvalResult, evaluate
from digitflow.evaluation.plots import misclassified_grid
from reporting import timing
from reporting.progress import run_logger
from tasks.data import load_prepared, log_dataset_input
from tasks.train import TrainedModel
from tracking import runlog
from tracking.runs import child_run, log_confusion


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate_model(
    trained: TrainedModel, data: PreparedDataset, config: DataConfig, parent_run_id: str | None = None
) -> dict[str, float]:
    """Accuracy, loss, per-class accuracy and confusion matrix (PNG + CSV) on the held-out split.

    Metrics: ``test/loss``, ``test/accuracy``, ``test/class_<k>_accuracy``; also on the parent run.
    """
    with child_run("evaluate", parent_run_id, tags={"dataset.test.digest": data.digest}):
        result = _evaluate_and_log(trained, data, config, prefix="test", artifact_dir="evaluation")
    metrics = result.metrics("test")
    _log_to_parent(parent_run_id, {"test/loss": result.loss, "test/accuracy": result.accuracy})
    run_logger().info("test accuracy %.4f, loss %.4f on %s", result.accuracy, result.loss, data.spec)
    return metrics


@task(name="cross-domain", task_run_name="cross-domain {data.spec}", cache_policy=NO_CACHE, persist_result=False)
def cross_domain_test(
    trained: TrainedModel,
    data: PreparedDataset,
    config: DataConfig,
    parent_run_id: str | None = None,
    baseline: TrainedModel | None = None,
) -> dict[str, float]:
    """Evaluate on another domain's images, preprocessed with ``config.target_preprocess``.

    Metrics ``cross/<dataset>/accuracy``, ``cross/<dataset>/loss`` and per-class accuracy; artifacts: the
    confusion matrix and a grid of misclassified target images with predicted and true labels. A
    domain-adapted model is evaluated with its target's batch-norm statistics on that target's images
    (``TrainedModel.model_for``); ``baseline`` (the source-only model of an adapted run) is evaluated on
    the same images: ``cross/<dataset>/source_only_accuracy`` and ``/source_only_loss``.
    """
    key = target_key(data.spec)
    prefix = f"cross/{key}"
    with child_run(f"cross-domain {data.spec}", parent_run_id, tags={f"dataset.target.{key}.digest": data.digest}):
        runlog.log_params({"target": data.spec, "target_preprocess": config.target_preprocess})
        result = _evaluate_and_log(trained, data, config, prefix=prefix, artifact_dir=f"cross/{key}", grid=True)
        headline = {f"{prefix}/accuracy": result.accuracy, f"{prefix}/loss": result.loss}
        if baseline is not None:
            dataset = load_prepared(data, config.data_dir, config.cache_dir)
            images, labels = model_inputs(dataset, config.target_preprocess, baseline.device)
            with timing.work("cross_domain"):
                base = evaluate(baseline.model_for(data.spec), images, labels, num_classes=dataset.num_classes)
            headline.update({f"{prefix}/source_only_accuracy": base.accuracy, f"{prefix}/source_only_loss": base.loss})
            runlog.log_metrics(headline)
    _log_to_parent(parent_run_id, headline)
    run_logger().info(
        "cross-domain accuracy %.4f on %s (%s preprocessing)%s",
        result.accuracy,
        data.spec,
        config.target_preprocess,
        f"; source-only {headline[f'{prefix}/source_only_accuracy']:.4f}" if baseline is not None else "",
    )
    return {**result.metrics(prefix), **headline}


def target_key(spec: str) -> str:
    """Metric-name key of a target: the dataset name for a whole split (``usps:test`` -> ``usps``),
    else the spec made safe for metric names (``usps:test[:50%]`` -> ``usps_test_50pct``)."""
    parsed = parse_spec(spec)
    if str(parsed) == f"{parsed.name}:{parsed.split}":
        return parsed.name
    return re.sub(r"_+", "_", re.sub(r"[^\w.-]", "_", str(parsed).replace("%", "pct"))).strip("_")


def _evaluate_and_log(
    trained: TrainedModel, data: PreparedDataset, config: DataConfig, prefix: str, artifact_dir: str, grid: bool = False
) -> EvalResult:
    dataset = load_prepared(data, config.data_dir, config.cache_dir)
    images, labels = model_inputs(dataset, config.target_preprocess, trained.device)
    with timing.work("evaluation" if prefix == "test" else "cross_domain"):
        result = evaluate(trained.model_for(data.spec), images, labels, num_classes=dataset.num_classes)
    log_dataset_input(dataset, context="evaluation")
    runlog.log_metrics(result.metrics(prefix))
    classes = list(dataset.classes)
    log_confusion(result.confusion, classes, artifact_dir, title=f"{data.spec}: accuracy {result.accuracy:.4f}")
    if grid:
        figure = misclassified_grid(images, result.predictions, labels, classes, title=f"misclassified in {data.spec}")
        runlog.log_figure(figure, f"{artifact_dir}/misclassified.png")
    return result


def _log_to_parent(parent_run_id: str | None, metrics: dict[str, float]) -> None:
    """Headline metrics go on the parent run too, so the runs table compares flow runs directly."""
    if parent_run_id is not None:
        client = mlflow.MlflowClient()
        for key, value in metrics.items():
            client.log_metric(parent_run_id, key, value)

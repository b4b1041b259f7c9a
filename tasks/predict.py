"""Prediction tasks: load an exported model by URI or file, and score a prepared dataset with it."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Metric, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.data import PreparedDataset
from digitflow.data.ids import image_ids
from digitflow.prediction.model import ScoringModel, load_scoring_model
from digitflow.prediction.output import label_names, write_predictions, write_submission
from digitflow.prediction.score import predict_dataset
from reporting.progress import run_logger
from tasks.data import load_prepared
from tracking import runlog
from tracking.models import ModelSource, resolve_model
from tracking.runs import child_run


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, and where it came from."""

    model: ScoringModel
    source: ModelSource

    def params(self) -> dict[str, str]:
        """What a prediction run records of its model."""
        metadata = self.model.metadata
        carried = "assumed (the file carries none)" if self.model.assumed else "carried by the file"
        return {
            **self.source.params(),
            "model.classes": ", ".join(label_names(metadata.classes)),
            "model.frame": metadata.frame,
            "model.metadata": carried,
        }


@dataclass
class PredictionReport:
    """What a prediction wrote and found."""

    spec: str
    digest: str
    num_images: int
    counts: dict[str, int]  # predicted images per class, by the name written in the file
    output: str
    submission: str | None = None
    accuracy: float | None = None  # with labels in the input
    seconds: float = 0.0  # scoring and writing, after the data was prepared
    metrics: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as short lines for a terminal."""
        counts = ", ".join(f"{name}: {n}" for name, n in self.counts.items())
        lines = [
            f"{self.num_images} images of {self.spec} (digest {self.digest[:12]})",
            f"predictions: {self.output}" + (f"; submission: {self.submission}" if self.submission else ""),
            f"predicted per class: {counts}",
        ]
        if self.accuracy is not None:
            lines.append(f"accuracy {self.accuracy:.4f} (the input's labels)")
        return lines


@task(name="load model", task_run_name="load model {uri}", cache_policy=NO_CACHE, persist_result=False)
def load_model(uri: str) -> LoadedModel:
    """Resolve ``uri`` (an MLflow model URI, a file, an MLflow model folder) and load the model it names on
    the CPU, with the class names and framing it carries (a file without them: the digits and
    ``mnist-frame``, said in the log)."""
    with tempfile.TemporaryDirectory(prefix="digitflow-model-") as tmp:  # a download lives as long as the load
        source = resolve_model(uri, tmp)
        model = load_scoring_model(source.path)
    if model.assumed:
        run_logger().warning(
            "%s carries no class names or framing (exported before digitflow models carried them): taken as "
            "%d classes %s, framed with %s",
            uri,
            len(model.classes),
            ", ".join(label_names(model.classes)),
            model.metadata.frame,
        )
    return LoadedModel(model, source)


@task(name="predict", task_run_name="predict {data.spec}", cache_policy=NO_CACHE, persist_result=False)
def predict_images(
    loaded: LoadedModel,
    data: PreparedDataset,
    data_dir: str,
    cache_dir: str,
    output: str,
    submission: str | None = None,
    batch_size: int = 2048,
    parent_run_id: str | None = None,
) -> PredictionReport:
    """Score every image of ``data`` and write ``output`` (one row per image) and, if named, ``submission``
    (Kaggle's ``ImageId,Label``). Logs, in a child run and on the parent run: the input's digest (tag
    ``dataset.input.digest``), ``predict/images``, ``predict/class_<k>_count`` for each class index k,
    ``predict/mean_confidence`` and, with labels in the input, ``predict/accuracy``; the files as artifacts."""
    began = time.perf_counter()
    tags = {"dataset.input.digest": data.digest}
    with child_run("predict", parent_run_id, tags=tags):
        dataset = load_prepared(data, data_dir, cache_dir)
        predictions = predict_dataset(loaded.model, dataset, image_ids(data), batch_size)
        written = [str(write_predictions(predictions, output))]
        if submission:
            written.append(str(write_submission(predictions, submission)))
        seconds = time.perf_counter() - began
        counts = predictions.counts()
        accuracy = predictions.accuracy()
        metrics = {
            "predict/images": float(len(predictions.ids)),
            "predict/mean_confidence": float(predictions.confidence.mean()),
            **{f"predict/class_{k}_count": float(n) for k, n in enumerate(counts)},
            **({} if accuracy is None else {"predict/accuracy": accuracy}),
        }
        runlog.log_params({"input": data.spec, "num_images": len(predictions.ids), "batch_size": batch_size})
        runlog.log_metrics({**metrics, "predict/seconds": seconds})
        for path in written:
            runlog.log_artifact(path, "predictions")
    if parent_run_id is not None:  # the flow's run shows the figures too, beside its params: one call
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            parent_run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            tags=[RunTag(key, value) for key, value in tags.items()],
        )
    names = label_names(predictions.classes)
    report = PredictionReport(
        spec=data.spec,
        digest=data.digest,
        num_images=len(predictions.ids),
        counts=dict(zip(names, counts, strict=True)),
        output=written[0],
        submission=written[1] if submission else None,
        accuracy=accuracy,
        seconds=seconds,
        metrics=metrics,
    )
    run_logger().info("%s", "; ".join(report.lines()))
    return report

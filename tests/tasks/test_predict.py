"""The prediction tasks through ``.fn``: a registered model loads with its record, scores, writes and logs."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import torch
from prefect.logging import disable_run_logger

from digitflow.config import DataConfig, ExportConfig
from digitflow.data.framing import model_inputs
from digitflow.data.registry import DIGIT_CLASSES
from digitflow.errors import ConfigError
from digitflow.export.exporters import export_torchscript
from digitflow.export.inputs import for_export
from digitflow.export.metadata import ModelMetadata, run_metadata
from digitflow.models import LeNet
from tasks.data import download_dataset, load_prepared, prepare_dataset
from tasks.export import _log_and_register
from tasks.predict import load_model, predict_images
from tests.fakedata import fake_data_dir
from tracking.store import setup_tracking

# The tests load TorchScript files themselves (torch.jit.load, which torch 2.14 calls deprecated)
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")


def prepared(spec: str, data_dir: Path, cache_dir: Path, parent_run_id: str | None = None):
    files = download_dataset.fn(spec, str(data_dir), offline=True)
    return prepare_dataset.fn(spec, files, str(data_dir), str(cache_dir), parent_run_id)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_registered_model_loads_with_its_record_scores_and_logs_the_prediction(tmp_path, monkeypatch, mlflow_store):
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",))
    setup_tracking("predict-test")  # before any run: not the experiment an earlier test of this process set
    test_data = prepared("mnist:test", data_dir, tmp_path / "cache")
    dataset = load_prepared(test_data, str(data_dir), str(tmp_path / "cache"))
    images, labels = model_inputs(dataset, "mnist-frame", "cpu")
    record = run_metadata(DataConfig(train="mnist:train"))
    torch.manual_seed(0)  # an untrained LeNet: registered as the export task registers it (its own test trains one)
    torchscript = export_torchscript(for_export(LeNet()), images[:1], tmp_path / "lenet.pt", metadata=record)
    with mlflow.start_run() as pipeline:
        parent_id = pipeline.info.run_id
        _log_and_register(torchscript, images, parent_id, {"test/accuracy": 0.5}, ExportConfig(), "lenet")

    with disable_run_logger():
        by_alias = load_model.fn("models:/digitflow-lenet@candidate")  # what the registry hands out
        by_version = load_model.fn("models:/digitflow-lenet/1")
        by_file = load_model.fn(str(torchscript))
    assert (by_alias.model.metadata, by_alias.model.assumed) == (record, False)
    assert by_alias.source.params() == {
        "model.uri": "models:/digitflow-lenet@candidate",
        "model.name": "digitflow-lenet",
        "model.version": "1",
        "model.run_id": parent_id,
    }
    assert by_version.model.metadata == by_file.model.metadata == record
    assert by_alias.params()["model.classes"] == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"

    with disable_run_logger(), mlflow.start_run() as run:
        report = predict_images.fn(
            by_alias,
            test_data,
            str(data_dir),
            str(tmp_path / "cache"),
            str(tmp_path / "p.csv"),
            None,
            16,
            run.info.run_id,
        )
    rows = read_rows(tmp_path / "p.csv")
    reference = torch.jit.load(str(torchscript))(images).argmax(1)  # the file itself, in plain torch
    assert [int(r["label"]) for r in rows] == reference.tolist()
    assert [int(r["true_label"]) for r in rows] == labels.tolist()
    assert [r["image"] for r in rows] == [str(i) for i in range(len(labels))]
    accuracy = float((reference == labels).float().mean())
    assert report.accuracy == pytest.approx(accuracy)
    assert report.counts == {str(d): int((reference == d).sum()) for d in range(10)}

    client = mlflow.MlflowClient()
    parent = client.get_run(run.info.run_id)
    assert parent.data.tags["dataset.input.digest"] == test_data.digest
    assert parent.data.metrics["predict/accuracy"] == pytest.approx(accuracy)
    assert parent.data.metrics["predict/images"] == len(labels)
    assert sum(parent.data.metrics[f"predict/class_{d}_count"] for d in range(10)) == len(labels)
    [child] = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'", output_format="list")
    assert [a.path for a in client.list_artifacts(child.info.run_id, "predictions")] == ["predictions/p.csv"]

    for uri, expected in (  # the registered model exists: only its name, alias or version is wrong
        ("models:/nowhere@champion", "no model models:/nowhere@champion in the MLflow store"),
        ("models:/digitflow-lenet@nobody", "alias nobody not found"),
        ("models:/digitflow-lenet/99", "version=99"),
    ):
        with pytest.raises(ConfigError, match=expected) as excinfo, disable_run_logger():
            load_model.fn(uri)
        assert "\n" not in str(excinfo.value)


def test_a_local_model_that_is_not_there_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"no model at no/such/lenet\.pt \(no such file\); give models:/NAME@ALIAS"):
        load_model.fn("no/such/lenet.pt")


def test_a_model_folder_mlflow_wrote_is_a_local_model_too(tmp_path):  # no store: a folder on disk
    record = ModelMetadata(DIGIT_CLASSES, "resize")
    path = export_torchscript(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
        torch.rand(1, 1, 28, 28),
        tmp_path / "m.pt",
        metadata=record,
    )
    mlflow.pytorch.save_model(
        torch.jit.load(str(path)), tmp_path / "mlflow-model", serialization_format="pickle", pip_requirements=["torch"]
    )
    with disable_run_logger():
        loaded = load_model.fn(str(tmp_path / "mlflow-model"))
    assert loaded.model.metadata == record
    assert loaded.source.path == str(tmp_path / "mlflow-model" / "data" / "model.pth")

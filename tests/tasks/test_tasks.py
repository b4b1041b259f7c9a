"""The Prefect tasks, called through ``.fn`` (no orchestration), against a temporary MLflow store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
from prefect import State, flow
from prefect.logging import disable_run_logger

from digitflow.config import DataConfig, ExportConfig, OptimizerConfig, RunConfig, TrainConfig
from digitflow.data import PreparedDataset
from digitflow.errors import DataError, TrainingDivergedError
from digitflow.export.metadata import run_metadata
from digitflow.prediction.model import load_scoring_model
from tasks.data import download_dataset, prepare_dataset
from tasks.evaluate import cross_domain_test, evaluate_model, target_key
from tasks.export import export_model
from tasks.train import train_model
from tests.fakedata import fake_data_dir
from tracking.store import setup_tracking


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    return fake_data_dir(tmp_path, monkeypatch)


def tiny_config(tmp_path: Path, data_dir: Path, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), offline=True),
        train=TrainConfig(epochs=2, batch_size=16, **train),
        export=ExportConfig(verify_images=8, latency_repeats=2),
        output_dir=str(tmp_path / "out"),
    )


def prepared(spec: str, config: RunConfig):
    files = download_dataset.fn(spec, config.data.data_dir, offline=True)
    return prepare_dataset.fn(spec, files, config.data.data_dir, config.data.cache_dir)


def child_runs(parent_id: str):
    return {
        r.info.run_name: r
        for r in mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    }


def test_download_offline_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*offline"):
        download_dataset.fn("mnist:test", str(tmp_path / "empty"), offline=True)


@pytest.mark.parametrize("offline", [True, False])
def test_in_a_deployment_run_missing_data_says_how_to_fix_the_deployment(tmp_path, monkeypatch, offline):
    import tasks.data

    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("usps",))
    (data_dir / "USPS" / "usps.t.bz2").unlink()  # online, its fake:// mirror fails: no network needed
    monkeypatch.setattr(tasks.data, "in_deployment_run", lambda: True)
    with pytest.raises(DataError) as excinfo:
        download_dataset.fn("usps:test", str(data_dir), offline=offline)
    message = str(excinfo.value)
    assert "usps:test needs usps.t.bz2" in message
    assert str(data_dir / "USPS") in message
    assert "set DIGITFLOW_DATA_DIR in the worker's environment, or pass -p data_dir=DIR" in message
    assert "--offline" not in message
    assert "\n" not in message
    assert ("network" in message) is not offline


def test_a_flow_run_is_a_deployment_run_only_when_a_deployment_started_it(prefect_server):
    from tasks.data import in_deployment_run

    @flow
    def probe() -> bool:
        return in_deployment_run()

    assert probe() is False
    assert in_deployment_run() is False


def test_train_evaluate_cross_domain_export_log_to_child_runs(tmp_path, data_dir, mlflow_store, monkeypatch):
    config = tiny_config(tmp_path, data_dir)
    # AOTInductor asked for where it cannot compile: one warning line, the other formats kept (the compile
    # itself, tens of seconds, is tested in tests/test_cpp_consumer.py)
    config = dataclasses.replace(
        config, export=dataclasses.replace(config.export, formats=("torchscript", "export", "aoti"))
    )
    monkeypatch.setenv("CXX", "no-such-compiler++")
    setup_tracking("tasks-test")
    with disable_run_logger(), mlflow.start_run() as parent:
        pid = parent.info.run_id
        train_data, test_data, usps = (prepared(s, config) for s in ("mnist:train", "mnist:test", "usps:test"))
        trained = train_model.fn(train_data, config, str(tmp_path / "ck.pt"), pid)
        test_metrics = evaluate_model.fn(trained, test_data, config.data, pid)
        cross = cross_domain_test.fn(trained, usps, config.data, pid)
        exported = export_model.fn(trained, test_data, config, test_metrics, [cross], pid)

    runs = child_runs(pid)
    assert set(runs) == {
        "prepare mnist:train",
        "prepare mnist:test",
        "prepare usps:test",
        "train",
        "evaluate",
        "cross-domain usps:test",
        "export",
    }
    train_run = runs["train"]
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "train/loss")] == [1, 2]
    assert train_run.data.params["train.epochs"] == "2"
    assert {"train/images_per_sec", "train/seconds"} <= set(train_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id)}
    assert {"config.json", "plots", "checkpoint"} <= artifacts

    assert 0.0 <= test_metrics["test/accuracy"] <= 1.0
    assert len([k for k in test_metrics if "/class_" in k]) == 10
    assert set(runs["evaluate"].data.metrics) >= {"test/accuracy", "test/loss", "test/class_3_accuracy"}
    assert {"cross/usps/accuracy", "cross/usps/loss"} <= set(cross)
    cross_artifacts = {a.path for a in client.list_artifacts(runs["cross-domain usps:test"].info.run_id, "cross/usps")}
    assert {
        "cross/usps/confusion_matrix.png",
        "cross/usps/confusion_matrix.csv",
        "cross/usps/misclassified.png",
    } <= cross_artifacts
    assert client.get_run(pid).data.metrics["cross/usps/accuracy"] == pytest.approx(cross["cross/usps/accuracy"])

    assert Path(exported["torchscript_path"]).is_file()
    assert Path(exported["program_path"]).is_file()
    assert "aoti_path" not in exported
    assert not list(Path(exported["torchscript_path"]).parent.glob("*.aoti.pt2*"))
    for path in (exported["torchscript_path"], exported["program_path"]):  # what digitflow predict reads
        assert load_scoring_model(path).metadata == run_metadata(config.data)
    assert exported["export/torchscript_max_abs_diff"] <= 1e-5
    export_run = runs["export"].data
    assert (export_run.params["formats"], export_run.params["formats_written"]) == (
        "torchscript,export,aoti",
        "torchscript,export",
    )
    assert "no-such-compiler++" in export_run.tags["export.aoti_error"]
    assert {"export/program_max_abs_diff", "export/program_ms_b1"} <= set(export_run.metrics)
    version = client.get_model_version_by_alias("digitflow-lenet", "candidate")
    assert str(version.version) == exported["model_version"]
    assert float(version.tags["test/accuracy"]) == pytest.approx(test_metrics["test/accuracy"], abs=1e-4)
    assert "cross/usps/accuracy" in version.tags


def test_divergence_fails_the_child_run_and_keeps_what_was_logged(tmp_path, data_dir, mlflow_store):
    config = tiny_config(tmp_path, data_dir, optimizer=OptimizerConfig(kwargs={"lr": 1e12}))
    setup_tracking("tasks-test")
    with disable_run_logger(), mlflow.start_run() as parent:
        train_data = prepared("mnist:train", config)
        with pytest.raises(TrainingDivergedError, match="loss became"):
            train_model.fn(train_data, config, str(tmp_path / "ck.pt"), parent.info.run_id)
    run = child_runs(parent.info.run_id)["train"]
    assert run.info.status == "FAILED"
    assert run.data.params["train.optimizer.kwargs.lr"] == "1000000000000.0"


def test_target_keys_are_metric_safe():
    assert target_key("usps:test") == "usps"
    assert target_key("usps:test[:50%]") == "usps_test_50pct"
    assert target_key("mnist:test[8000:]") == "mnist_test_8000"


def test_prepare_is_cached_on_inputs_and_file_content(tmp_path, data_dir, prefect_server):
    cache = str(tmp_path / "cache")

    @flow
    def prepare_twice() -> tuple[State[PreparedDataset], State[PreparedDataset]]:
        files = download_dataset("mnist:test", str(data_dir), True)
        first = prepare_dataset("mnist:test", files, str(data_dir), cache, return_state=True)
        second = prepare_dataset("mnist:test", files, str(data_dir), cache, return_state=True)
        return first, second

    with disable_run_logger():
        first, second = prepare_twice()
    assert first.name == "Completed"
    assert second.name == "Cached"
    assert second.result().digest == first.result().digest

"""The pipeline with a model of the user's own (``--model package.module:Factory``): trained, evaluated,
exported, verified and registered under its own name; and a model that TorchScript cannot compile ends the
run with one line saying which export failed and why, after everything it trained is logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from digitflow.errors import ExportError
from flows.pipeline import pipeline
from tests.fakedata import fake_digits, write_image_folder
from tracking.runs import CHECKPOINT_TAG


def own_model_run(tmp_path: Path, model: str, **overrides):
    images, labels = fake_digits(60)
    folder = write_image_folder(tmp_path / "digits", images, labels)
    params = dict(
        train=f"folder:{folder}",
        model=model,
        epochs=1,
        batch_size=16,
        data_dir=str(tmp_path / "no-data"),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        experiment="own-model-test",
        attack=["none"],
    )
    return pipeline(**{**params, **overrides})


def test_a_user_model_goes_through_the_whole_pipeline_under_its_own_name(tmp_path, mlflow_store, prefect_server):
    summary = own_model_run(tmp_path, "tests.toy_models:tiny")
    client = mlflow.MlflowClient()
    run = client.get_run(summary.run_id)
    assert run.data.params["train.model"] == "tests.toy_models:tiny"
    assert "· tiny folder:" in run.info.run_name
    assert "test/accuracy" in run.data.metrics
    assert Path(summary.exported["torchscript_path"]).name == "tiny.pt"
    assert Path(summary.exported["program_path"]).name == "tiny.pt2"
    assert summary.exported["model_name"] == "digitflow-tiny"
    version = client.get_model_version_by_alias("digitflow-tiny", "candidate")
    assert version.run_id == summary.run_id
    assert version.tags["model"] == "tests.toy_models:tiny"
    assert "tiny digit classifier" in str(version.description)


def test_a_model_that_cannot_be_scripted_keeps_what_it_trained(tmp_path, mlflow_store, prefect_server):
    with pytest.raises(ExportError) as info:
        own_model_run(tmp_path, "tests.toy_models:BranchyNet")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the model was trained but not exported: torch.jit.script failed for BranchyNet: ")
    assert "(--export-mode trace may take it); torch.export wrote branchynet.pt2" in message
    assert "the run keeps what it trained: the checkpoint " in message
    client = mlflow.MlflowClient()
    [run] = mlflow.search_runs(
        experiment_names=["own-model-test"], filter_string="tags.`mlflow.parentRunId` IS NULL", output_format="list"
    )
    assert run.info.run_id in message
    assert run.info.status == "FINISHED"  # every figure is logged; only the export failed
    assert "test/accuracy" in run.data.metrics
    assert run.data.tags["export.error"].startswith("torch.jit.script failed for BranchyNet: ")
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'", output_format="list")
    status = {c.info.run_name: c.info.status for c in children}
    assert status["train"] == status["evaluate"] == "FINISHED"
    assert status["export"] == "FAILED"
    checkpoint = Path(run.data.tags[CHECKPOINT_TAG])
    assert checkpoint.name.startswith("branchynet-")
    assert checkpoint.is_file()
    assert mlflow.search_logged_models(filter_string="name = 'model'", output_format="list")  # the trained model
    assert not client.search_model_versions("name = 'digitflow-branchynet'")  # nothing registered

"""The pipeline on a user's own files: a folder of images, trained without --test."""

from __future__ import annotations

import mlflow

from flows.pipeline import pipeline
from tests.fakedata import fake_digits, write_image_folder


def test_a_folder_trains_on_its_rest_and_tests_on_its_recorded_holdout(tmp_path, mlflow_store, prefect_server):
    images, labels = fake_digits(100)
    folder = write_image_folder(tmp_path / "digits", images, labels)
    summary = pipeline(
        train=f"folder:{folder}",
        epochs=1,
        batch_size=16,
        data_dir=str(tmp_path / "no-data"),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        experiment="own-data-test",
        attack=["none"],
    )
    run = mlflow.MlflowClient().get_run(summary.run_id)
    params = run.data.params
    assert params["data.train"] == f"folder:{folder}?split=train,holdout=10,seed=0"
    assert params["data.test"] == f"folder:{folder}?split=test,holdout=10,seed=0"
    assert params["data.targets"] == "[]"
    assert "test/accuracy" in run.data.metrics
    assert not any(key.startswith("cross/") for key in run.data.metrics)
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{summary.run_id}'", output_format="list")
    prepared = {r.data.params.get("spec"): r.data.params for r in children if r.info.run_name.startswith("prepare")}
    held_out = prepared[params["data.test"]]
    assert held_out["num_samples"] == "10"
    assert held_out["source.holdout"] == "10% drawn with seed 0: 10 of 100 images in test"
    assert "invert=auto: 0 of 100 images inverted" in held_out["source.reading"]

"""The pipeline on the official files in ../shared/data (MNIST test, USPS test): real accuracy targets."""

from __future__ import annotations

from typing import TypedDict

import mlflow
import pytest

from flows.pipeline import pipeline

pytestmark = pytest.mark.slow


class Splits(TypedDict):  # typed keys, so that `pipeline(**SPLITS, ...)` is checked against its parameters
    train: str
    test: str
    offline: bool


SPLITS = Splits(train="mnist:test[:8000]", test="mnist:test[8000:]", offline=True)


def test_two_epochs_reach_098_on_held_out_mnist(tmp_path, shared_data, mlflow_store, prefect_server):
    summary = pipeline(
        **SPLITS,
        target=[],
        epochs=2,
        data_dir=str(shared_data),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        attack=["pgd"],  # a cheap robustness evaluation: 500 images, PGD-5 at 0.1
        epsilons=[0.0, 0.1],
        pgd_steps=5,
        attack_images=500,
    )
    assert summary.test_accuracy >= 0.98
    metrics = mlflow.MlflowClient().get_run(summary.run_id).data.metrics
    assert metrics["test/accuracy"] == summary.test_accuracy
    assert metrics["robust/pgd/accuracy_eps10"] < summary.test_accuracy - 0.1  # a standard model breaks


def test_default_settings_reach_090_on_usps_without_target_data(tmp_path, shared_data, mlflow_store, prefect_server):
    summary = pipeline(
        **SPLITS,
        target=["usps:test"],
        attack=["none"],  # the default robustness evaluation takes minutes on a CPU
        data_dir=str(shared_data),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
    )
    assert summary.cross_accuracy["usps"] >= 0.90
    assert summary.test_accuracy >= 0.98
    assert summary.exported["export/torchscript_max_abs_diff"] <= 1e-5
    assert summary.exported["export/program_max_abs_diff"] <= 1e-5

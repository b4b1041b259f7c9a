"""digitflow run --nproc 2: the pipeline trains data-parallel on two CPU processes (torchrun, gloo),
rank 0 logs and checkpoints (resuming on every rank: tests/unit/training/test_data_parallel.py)."""

from __future__ import annotations

import mlflow

from tests.fakedata import fake_data_dir
from tests.flows.test_pipeline import runs_by_name, tiny_run


def test_two_processes_train_and_rank_0_logs_once(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    summary = tiny_run(tmp_path, data_dir, target=[], nproc=2)

    client = mlflow.MlflowClient()
    parent = client.get_run(summary.run_id)
    assert parent.data.tags["train.nproc"] == "2"
    train = runs_by_name(summary.run_id)["train"]
    assert train.data.params["train.nproc"] == "2"
    assert "DDP x2" in train.data.tags["train.step"]
    # rank 0 alone logged: one value per epoch, not one per rank
    assert [m.step for m in client.get_metric_history(train.info.run_id, "train/loss")] == [1, 2]
    assert summary.test_accuracy == parent.data.metrics["test/accuracy"]

"""The pipeline when its tracking server goes away in the middle of training: training goes on, what
could not be logged is kept on disk, the flow fails with one line naming the folder, and `digitflow
replay` puts it all in the runs once the server is back."""

from __future__ import annotations

import json
from typing import Any

import mlflow

from flows.cli import main as cli_main
from tests.fakedata import fake_data_dir
from tests.faults import LostServer
from tests.flows.test_pipeline import runs_by_name, tiny_run
from tracking import runlog


def after_epoch_1(*args: Any, **kwargs: Any) -> bool:
    """True for the store call that logs epoch 1's training loss."""
    metrics = [m for value in [*args, *kwargs.values()] if isinstance(value, list) for m in value]
    return any(getattr(m, "key", None) == "train/loss" and getattr(m, "step", None) == 1 for m in metrics)


def test_server_lost_after_epoch_1_keeps_the_rest_and_replay_completes_the_runs(
    tmp_path, monkeypatch, mlflow_store, prefect_server, capsys
):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    server = LostServer(monkeypatch, down_after=after_epoch_1)
    try:
        state = tiny_run(tmp_path, data_dir, epochs=3, return_state=True)
    finally:
        runlog.reset()
        runlog.keep_in(runlog.DEFAULT_KEPT_DIR)
    assert server.down
    assert state.is_failed()
    kept = (tmp_path / "out" / "unlogged").resolve()
    assert "lost the tracking server" in state.message
    assert str(kept) in state.message

    # training went on to the end: its checkpoint has all three epochs, the kept metrics epochs 2 and 3
    [checkpoint] = (tmp_path / "out" / "checkpoints").glob("*.pt")
    [train_folder] = [p for p in kept.iterdir() if (p / "metrics.jsonl").exists()]
    steps = {json.loads(line)["step"] for line in (train_folder / "metrics.jsonl").read_text().splitlines()}
    assert {2, 3} <= steps
    assert (train_folder / "artifacts" / "plots" / "training_curves.png").is_file()

    server.down = False
    capsys.readouterr()
    assert cli_main(["replay", str(kept)]) == 0
    assert not any(kept.iterdir())
    [parent] = mlflow.search_runs(
        experiment_names=["pipeline-test"], filter_string="tags.`mlflow.parentRunId` IS NULL", output_format="list"
    )
    assert parent.info.status == "FAILED"  # the flow did not get past training
    train = runs_by_name(parent.info.run_id)["train"]
    assert train.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(train.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert checkpoint.is_file()

"""Logging that keeps on disk what a lost tracking server did not take (tracking/runlog.py), and replays it.

The server is "lost" by a fault injected into MLflow's store (tests/faults.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

import mlflow
import numpy as np
import pytest
from matplotlib import pyplot as plt
from mlflow.exceptions import MlflowException

from flows.cli import main as cli_main
from tests.faults import LostServer
from tracking import runlog
from tracking.runs import child_run, tracked_run
from tracking.store import setup_tracking


@pytest.fixture
def server(monkeypatch, mlflow_store, tmp_path) -> Iterator[LostServer]:
    setup_tracking("runlog-test", output_dir=tmp_path / "out")
    yield LostServer(monkeypatch)
    runlog.reset()
    runlog.keep_in(runlog.DEFAULT_KEPT_DIR)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def log_a_run_that_loses_the_server_after_epoch_1(server: LostServer, source: Path, ids: dict[str, str]) -> None:
    """A parent run and its train run (their ids into ``ids``) that log epoch 1, lose the server, then log the rest."""
    with tracked_run(run_name="parent") as parent, child_run("train", parent.info.run_id) as train:
        ids.update(parent=parent.info.run_id, train=train.info.run_id)
        runlog.log_params({"train.epochs": 3})
        runlog.log_metrics({"train/loss": 1.0}, step=1)
        server.down = True  # the server goes away after epoch 1
        runlog.log_metrics({"train/loss": 0.5}, step=2)
        runlog.log_metrics({"train/loss": 0.25}, step=3)
        runlog.log_metric("train/seconds", 12.5)
        runlog.set_tags({"train.step": "LeNet"})
        runlog.log_param("train.nproc", 1)
        runlog.log_artifact(source, "checkpoint")
        runlog.log_json({"lr": 0.1}, "config.json")
        runlog.log_image(np.full((4, 4), 0.5), "samples/epoch_003.png")
        runlog.log_figure(plt.figure(), "plots/curves.png")


def test_a_server_lost_mid_run_keeps_everything_on_disk_and_replay_logs_it(server, mlflow_store, tmp_path, capsys):
    source = tmp_path / "weights.pt"
    source.write_bytes(b"weights")
    ids: dict[str, str] = {}
    with pytest.raises(runlog.TrackingLostError) as error:
        log_a_run_that_loses_the_server_after_epoch_1(server, source, ids)
    # after the first failure nothing waits on the lost server again, not even ending the two runs
    assert server.calls_while_down == 1

    message = str(error.value)
    assert "\n" not in message
    kept_root = (tmp_path / "out" / "unlogged").resolve()
    assert str(kept_root) in message
    assert "digitflow replay" in message
    assert "(http://127.0.0.1:5000: [Errno 111] Connection refused)" not in message  # the store in use, not the fake's
    assert f"({mlflow_store}: [Errno 111] Connection refused)" in message  # why, in a few words
    train_id, parent_id = ids["train"], ids["parent"]
    folder = kept_root / train_id
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(m["key"], m["step"], m["value"]) for m in metrics] == [
        ("train/loss", 2, 0.5),
        ("train/loss", 3, 0.25),
        ("train/seconds", 0, 12.5),
    ]
    assert (folder / "artifacts" / "checkpoint" / "weights.pt").read_bytes() == b"weights"
    assert json.loads((folder / "artifacts" / "config.json").read_text()) == {"lr": 0.1}
    assert (folder / "artifacts" / "samples" / "epoch_003.png").stat().st_size > 0
    assert (folder / "artifacts" / "plots" / "curves.png").stat().st_size > 0
    assert json.loads((folder / "run.json").read_text())["status"] == "FINISHED"  # its body completed
    assert json.loads((kept_root / parent_id / "run.json").read_text())["status"] == "FAILED"
    assert plt.get_fignums() == []
    assert mlflow.active_run() is None

    server.down = False  # the server is back
    assert cli_main(["replay", str(tmp_path / "out" / "unlogged")]) == 0
    out = capsys.readouterr().out
    assert f"{train_id}: metrics 3, params 1, tags 1, artifacts 4 logged to {mlflow_store}" in out
    assert not folder.exists()
    assert not (kept_root / parent_id).exists()

    client = mlflow.MlflowClient()
    run = client.get_run(train_id)
    assert metric_history(train_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert run.data.params == {"train.epochs": "3", "train.nproc": "1"}
    assert run.data.tags["train.step"] == "LeNet"
    assert run.info.status == "FINISHED"
    assert client.get_run(parent_id).info.status == "FAILED"
    artifacts = {a.path for a in client.list_artifacts(train_id)} | {
        a.path for d in ("checkpoint", "samples", "plots") for a in client.list_artifacts(train_id, d)
    }
    assert {"config.json", "checkpoint/weights.pt", "samples/epoch_003.png", "plots/curves.png"} <= artifacts


def test_an_error_the_server_answers_with_is_raised_not_kept(server, tmp_path):
    def change_a_param() -> None:
        with tracked_run(run_name="parent"):
            runlog.log_params({"lr": 0.1})
            runlog.log_params({"lr": 0.2})  # MLflow refuses to change a logged param

    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        change_a_param()
    assert runlog.lost() is None
    assert not (tmp_path / "out" / "unlogged").exists()


def test_a_call_that_cannot_be_kept_still_names_the_folder(server, tmp_path):
    """The registry, a search: not kept, but the run's error still says where the rest went."""

    def lose_the_server_in_a_call_not_kept() -> None:
        with tracked_run(run_name="parent") as run:
            runlog.log_metrics({"test/accuracy": 0.99})
            server.down = True
            mlflow.MlflowClient().set_tag(run.info.run_id, "k", "v")  # not through runlog

    with pytest.raises(runlog.TrackingLostError, match="unlogged"):
        lose_the_server_in_a_call_not_kept()
    assert runlog.lost() is not None


def test_replay_of_an_empty_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["replay", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"digitflow: error: nothing kept to replay in {tmp_path}"


def test_kept_dir_follows_the_output_dir(mlflow_store, tmp_path):
    setup_tracking("runlog-test", output_dir=tmp_path / "elsewhere")
    try:
        assert runlog.kept_folder("abc") == Path(tmp_path / "elsewhere" / "unlogged" / "abc")
    finally:
        runlog.keep_in(runlog.DEFAULT_KEPT_DIR)


def test_only_mlflows_own_connection_failures_count_as_a_lost_server(server):
    def fail_to_reach_something_else() -> None:
        with tracked_run(run_name="parent"):
            raise ConnectionRefusedError("[Errno 111] Connection refused")  # Prefect's API, a worker: not MLflow

    with pytest.raises(ConnectionRefusedError):
        fail_to_reach_something_else()
    assert runlog.lost() is None


def test_after_the_loss_no_run_starts_and_the_runs_own_failure_is_named(server):
    def lose_the_server_then_fail() -> None:
        with tracked_run(run_name="parent"):
            server.down = True
            runlog.log_metrics({"train/loss": 0.5}, step=2)
            raise ValueError("loss became nan")

    with pytest.raises(runlog.TrackingLostError, match="the run itself failed: ValueError: loss became nan; what run"):
        lose_the_server_then_fail()
    calls = server.calls_while_down

    def start_another_run() -> None:
        with tracked_run(run_name="next"):
            pass

    with pytest.raises(runlog.TrackingLostError, match="what the runs before this one could not log is kept"):
        start_another_run()
    assert server.calls_while_down == calls  # refused before asking the server anything
    assert mlflow.active_run() is None


def test_a_folder_an_earlier_process_left_does_not_fail_a_clean_run(server, tmp_path):
    with tracked_run(run_name="parent") as run:
        pass
    left = runlog.kept_folder(run.info.run_id)
    left.mkdir(parents=True)
    (left / "run.json").write_text(json.dumps({"run_id": run.info.run_id, "status": "KILLED"}))
    with tracked_run(run_id=run.info.run_id):  # continued by a later process (a resumed sweep, say)
        runlog.log_metrics({"test/accuracy": 0.99})
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


def test_replay_logs_more_tags_and_params_than_one_batch_takes(server, mlflow_store):
    ids: dict[str, str] = {}

    def lose_the_server_then_tag() -> None:
        with tracked_run(run_name="parent") as run:
            ids["run"] = run.info.run_id
            server.down = True
            runlog.set_tags({f"tag.{i}": i for i in range(150)})
            runlog.log_params({f"param.{i}": i for i in range(250)})

    with pytest.raises(runlog.TrackingLostError):
        lose_the_server_then_tag()
    server.down = False
    counts = runlog.replay(runlog.kept_folder(ids["run"]))
    assert counts == {"metrics": 0, "params": 250, "tags": 150, "artifacts": 0}
    data = mlflow.MlflowClient().get_run(ids["run"]).data
    assert len([k for k in data.tags if k.startswith("tag.")]) == 150
    assert len(data.params) == 250


def test_log_input_tries_again_when_another_run_created_the_same_dataset_at_once(monkeypatch):
    calls = []
    race = MlflowException(
        "BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
        '"dataset_pk"\nDETAIL:  Key (experiment_id, name, digest)=(1, mnist:test[9700:], 2722) already exists.'
    )

    def log_input(dataset, context):
        calls.append((dataset, context))
        if len(calls) == 1:
            raise race

    monkeypatch.setattr(mlflow, "log_input", log_input)
    monkeypatch.setattr(runlog.time, "sleep", lambda s: None)
    runlog.log_input("ds", context="prepared")
    assert calls == [("ds", "prepared"), ("ds", "prepared")]

    calls.clear()

    def always(dataset, context):
        calls.append((dataset, context))
        raise race

    monkeypatch.setattr(mlflow, "log_input", always)
    with pytest.raises(MlflowException, match="dataset_pk"):
        runlog.log_input("ds", context="prepared")
    assert len(calls) == 3  # then it gives up, with MLflow's own error

    def other(dataset, context):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no run")

    monkeypatch.setattr(mlflow, "log_input", other)
    with pytest.raises(MlflowException, match="no run"):
        runlog.log_input("ds", context="prepared")

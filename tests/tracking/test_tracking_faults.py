"""The tracking store under load and faults: three runs at once on a new store, a server that does not
answer, and the MLflow runs a killed run leaves behind, closed by the run that resumes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from tracking.runs import CHECKPOINT_TAG, RESUMES_TAG, continue_interrupted_runs
from tracking.store import TrackingError, setup_tracking

REPO = Path(__file__).resolve().parents[2]

ONE_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow
    from tracking.store import setup_tracking
    here, index = Path(sys.argv[1]), sys.argv[2]
    (here / f"ready-{index}").touch()
    while len(list(here.glob("ready-*"))) < 3:  # all three start the store at the same moment
        time.sleep(0.01)
    setup_tracking("load")
    with mlflow.start_run(run_name=f"run {index}"):
        mlflow.log_params({"index": index, "train.epochs": 1})
        mlflow.log_metric("test/accuracy", 0.9 + int(index) / 100)
        mlflow.log_text(f"artifact {index}", "note.txt")
        with mlflow.start_run(run_name="train", nested=True):
            mlflow.log_metric("train/loss", 1.0, step=1)
""")


def test_three_runs_at_once_on_a_new_empty_sqlite_store_all_complete(tmp_path):
    """Without the lock in setup_tracking, two tries here lost two and then one of three runs to the
    schema race (alembic, SQLAlchemy CircularDependencyError, AttributeError('dimension_attributes'))."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    processes = [
        subprocess.Popen([sys.executable, "-c", ONE_RUN, str(tmp_path), str(i)], env=env, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(errors)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["load"], output_format="list")
    parents = {r.data.params["index"]: r for r in runs if "index" in r.data.params}
    assert sorted(parents) == ["0", "1", "2"]
    assert len(runs) == 6  # and a train child each
    client = mlflow.MlflowClient()
    for index, run in parents.items():
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/accuracy"] == pytest.approx(0.9 + int(index) / 100)
        assert client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / index)).endswith("note.txt")


def test_an_unreachable_tracking_server_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket closes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match=rf"^the MLflow tracking server at http://127.0.0.1:{port} cannot be"):
        setup_tracking("x")

    result = subprocess.run(
        [sys.executable, "-m", "flows", "run", "--train", "mnist:test[:100]", "--output-dir", str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"digitflow: error: the MLflow tracking server at http://127.0.0.1:{port} cannot")
    assert "make serve" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_resumed_run_closes_the_killed_runs_it_continues_and_says_which(mlflow_store):
    client = mlflow.MlflowClient()
    mlflow.set_experiment("resume")
    checkpoint = "/abs/outputs/checkpoints/lenet-abc.pt"
    experiment = mlflow.get_experiment_by_name("resume")
    assert experiment is not None
    finished = client.create_run(experiment.experiment_id, tags={CHECKPOINT_TAG: checkpoint})
    client.set_terminated(finished.info.run_id)
    # what kill -9 leaves: a parent and its train run RUNNING forever
    killed = mlflow.start_run(run_name="killed", tags={CHECKPOINT_TAG: checkpoint})
    train = mlflow.start_run(run_name="train", nested=True)
    mlflow.end_run("RUNNING")  # leave both open without the process ending them
    mlflow.end_run("RUNNING")
    other = client.create_run(killed.info.experiment_id, tags={CHECKPOINT_TAG: "/another/checkpoint.pt"})
    with mlflow.start_run(run_name="resumed", tags={CHECKPOINT_TAG: checkpoint}) as resumed:
        assert continue_interrupted_runs(checkpoint, resumed.info.run_id) == killed.info.run_id
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(train.info.run_id).info.status == "KILLED"
    assert client.get_run(killed.info.run_id).data.tags["digitflow.ended_by"] == f"resumed by run {resumed.info.run_id}"
    assert client.get_run(resumed.info.run_id).data.tags[RESUMES_TAG] == killed.info.run_id
    assert client.get_run(other.info.run_id).info.status == "RUNNING"  # another checkpoint: not ours
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"
    with mlflow.start_run(run_name="fresh", tags={CHECKPOINT_TAG: "/new.pt"}) as fresh:
        assert continue_interrupted_runs("/new.pt", fresh.info.run_id) is None

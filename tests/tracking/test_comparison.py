"""digitflow compare: the runs table, its formats and plots, on a store with a few fake pipeline runs."""

from __future__ import annotations

import time

import mlflow
import pytest

from digitflow.config import ExportConfig
from digitflow.errors import ConfigError
from flows.cli import main
from tracking.comparison import plot_runs, render, runs_table

MODEL = ExportConfig.registered_model_name


def fake_run(name: str, lr: float, epochs: int, acc: float, usps: float | None, *, export: str = "FINISHED") -> str:
    """A parent run with the pipeline's params and headline metrics, train and export child runs."""
    mlflow.set_experiment("compare-test")
    with mlflow.start_run(run_name=name) as parent:
        mlflow.log_params(
            {
                "data.train": "mnist:train",
                "data.test": "mnist:test",
                "train.epochs": epochs,
                "train.optimizer.name": "SGD",
                "train.optimizer.kwargs.lr": lr,
                "train.batch_size": 64,
                "train.seed": 0,
                "train.model": "lenet",
            }
        )
        mlflow.log_metrics({"test/accuracy": acc, "test/loss": 1 - acc})
        if usps is not None:
            mlflow.log_metrics({"cross/usps/accuracy": usps, "cross/usps/class_3_accuracy": 0.5})
        with mlflow.start_run(run_name="train", nested=True):
            for epoch in range(1, epochs + 1):
                mlflow.log_metric("train/loss", 1 / epoch + lr, step=epoch)
        with mlflow.start_run(run_name="export", nested=True) as child:
            mlflow.log_metric("export/torchscript_mismatched_predictions", 0)
        if export != "FINISHED":
            mlflow.MlflowClient().set_terminated(child.info.run_id, status=export)
    time.sleep(0.01)  # distinct start times: newest first is well defined
    return parent.info.run_id


@pytest.fixture
def store(mlflow_store):
    runs = [
        fake_run("lr=0.01 · LeNet", 0.01, 2, 0.9810, 0.90),
        fake_run("LeNet mnist:train epochs=3", 0.05, 3, 0.9902, 0.94),
        fake_run("lr=0.1 · LeNet", 0.1, 2, 0.9701, None, export="FAILED"),
    ]
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    for run_id in runs[:2]:
        client.create_model_version(MODEL, source="file:///x", run_id=run_id)
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "candidate", "2")
    return runs


def test_one_row_per_pipeline_run_newest_first_with_params_figures_export_and_model(store):
    table = runs_table("compare-test")
    assert list(table["run_id"]) == store[::-1]
    assert list(table.columns) == [
        "run", "started", "status", "train", "model", "test", "epochs", "optimizer", "lr", "batch", "seed",
        "test/accuracy", "test/loss", "cross/usps/accuracy", "export", "version", "aliases", "run_id",
    ]  # fmt: skip
    row = table.set_index("run").loc["LeNet mnist:train epochs=3"]
    assert row["lr"] == 0.05
    assert row["epochs"] == 3
    assert row["test/accuracy"] == 0.9902
    assert row["export"] == "verified"
    assert row["version"] == "2"
    assert row["aliases"] == "candidate,champion"
    failed = table.set_index("run").loc["lr=0.1 · LeNet"]
    assert failed["export"] == "failed"
    assert failed["version"] == ""


def test_sort_filter_and_last(store):
    assert list(runs_table("compare-test", sort="test/accuracy")["test/accuracy"]) == [0.9902, 0.9810, 0.9701]
    assert list(runs_table("compare-test", sort="lr", ascending=True)["lr"]) == [0.01, 0.05, 0.1]
    assert list(runs_table("compare-test", last=2)["run_id"]) == store[:0:-1]
    filtered = runs_table("compare-test", filter_string="metrics.`test/accuracy` > 0.975")
    assert set(filtered["run_id"]) == set(store[:2])
    assert len(runs_table("compare-test", filter_string="params.`train.epochs` = '3'")) == 1


def test_bad_input_is_one_line(store):
    with pytest.raises(ConfigError, match="--sort 'nope' is not a column; columns: run, started"):
        runs_table("compare-test", sort="nope")
    with pytest.raises(ConfigError, match=r"--filter 'metrics\.x >'"):
        runs_table("compare-test", filter_string="metrics.x >")
    with pytest.raises(ConfigError, match=r"--filter 'bogus': Invalid clause\(s\) in filter string: 'bogus'$"):
        runs_table("compare-test", filter_string="bogus")  # not the parent-run clause the table adds
    with pytest.raises(ConfigError, match=r"no experiment 'other'.*compare-test"):
        runs_table("other")


def test_formats(store):
    table = runs_table("compare-test")
    text = render(table, "table")
    assert "0.9902" in text
    assert "candidate,champion" in text
    csv = render(table, "csv")
    assert csv.splitlines()[0].startswith("run,started,status,train,model,test,epochs")
    markdown = render(table, "markdown").splitlines()
    assert markdown[0].startswith("| run | started |")
    assert markdown[1].startswith("|---|---|")
    assert len(markdown) == 2 + len(store)
    assert render(table.iloc[0:0], "table") == "no runs"


def test_plots_a_figure_across_runs_or_the_training_curves(store, tmp_path):
    table = runs_table("compare-test")
    assert plot_runs(table, "test/accuracy", tmp_path / "acc.png").stat().st_size > 1000
    assert plot_runs(table, "train/loss", tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="cannot plot 'nope'"):
        plot_runs(table, "nope", tmp_path / "x.png")


def test_the_command(store, tmp_path, capsys):
    assert main(["compare", "--experiment", "compare-test", "--last", "2", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert main(["compare", "--experiment", "compare-test", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").is_file()
    assert capsys.readouterr().err == f"plot: {tmp_path / 'p.png'}\n"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--experiment", "compare-test", "--sort", "nope"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_no_store_yet_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    with pytest.raises(SystemExit):
        main(["compare"])
    assert "no MLflow store at" in capsys.readouterr().err


def test_the_children_of_one_run_with_extra_tag_and_param_columns(store, capsys):
    # A sweep's trials are the child runs of its run: here, the train and export runs of the first fake run.
    table = runs_table(
        "compare-test",
        parent_run_id=store[0],
        extra_tags=[("kind", "mlflow.runName")],
        extra_params=[("missing", "sweep.nothing")],
    )
    assert sorted(table["run"]) == ["export", "train"]
    assert list(table.columns[:5]) == ["run", "started", "status", "kind", "missing"]
    assert table["missing"].isna().all()
    assert main(["compare", "--experiment", "compare-test", "--sweep", store[0]]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed
    assert "lr=0.01 · LeNet" not in printed


def test_a_run_of_another_model_shows_the_version_of_its_own_registered_model(store):
    mlflow.set_experiment("compare-test")
    with mlflow.start_run(run_name="tinynet mnist:train epochs=6") as run:
        mlflow.log_params({"train.model": "tinynet", "export.registered_model_name": "digitflow-tinynet"})
    client = mlflow.MlflowClient()
    client.create_registered_model("digitflow-tinynet")
    client.create_model_version("digitflow-tinynet", source="file:///y", run_id=run.info.run_id)
    client.set_registered_model_alias("digitflow-tinynet", "candidate", "1")
    table = runs_table("compare-test").set_index("run")
    assert table.loc["tinynet mnist:train epochs=6", "model"] == "tinynet"
    assert table.loc["tinynet mnist:train epochs=6", "version"] == "1"
    assert table.loc["tinynet mnist:train epochs=6", "aliases"] == "candidate"
    assert table.loc["LeNet mnist:train epochs=3", "version"] == "2"  # the LeNet runs keep theirs

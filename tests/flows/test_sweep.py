"""The sweep flow on tiny data: a grid on a local Dask cluster of 2 workers, an Optuna search with a
failed trial that is then resumed, and the command's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from flows.cli import main as cli_main
from flows.sweep import sweep, task_runner
from tests.fakedata import fake_data_dir

REPO = Path(__file__).resolve().parents[2]


def fixed_options(tmp_path: Path, data_dir: Path, **overrides) -> dict:
    return {
        "train": "mnist:train",
        "test": "mnist:test",
        "target": [],
        "epochs": 1,
        "batch_size": 16,
        "data_dir": str(data_dir),
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "offline": True,
        **overrides,
    }


def children(parent_id: str) -> dict:
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list"
    )
    return {r.info.run_name: r for r in runs}


def test_grid_on_a_local_dask_cluster_of_two_workers(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the runner exports it for its workers; undone after
    summary = sweep.with_options(task_runner=task_runner("dask", 2))(
        space=["lr=0.02,0.05", "batch_size=16,32"],
        kind="grid",
        fixed=fixed_options(tmp_path, data_dir),
        runner="dask",
        workers=2,
        export_best=False,
        experiment="sweep-test",
    )

    assert summary.counts == {"complete": 4, "pruned": 0, "failed": 0}
    trials = children(summary.run_id)
    trial_runs = {name: run for name, run in trials.items() if name.startswith("trial ")}
    assert sorted(trial_runs) == [
        "trial 0: lr=0.02 batch_size=16",
        "trial 1: lr=0.02 batch_size=32",
        "trial 2: lr=0.05 batch_size=16",
        "trial 3: lr=0.05 batch_size=32",
    ]
    for run in trial_runs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep.state"] == "complete"
        assert {"test/accuracy", "test/loss", "train/loss", "sweep/seconds"} <= set(run.data.metrics)
        assert run.data.params["sweep.lr"] in ("0.02", "0.05")
        assert run.data.params["train.batch_size"] == run.data.params["sweep.batch_size"]
    # the data were prepared once, by the flow, not per trial
    assert sum(name.startswith("prepare ") for name in trials) == 2
    # the summary: the best trial, the table, the plots as artifacts of the sweep's run
    best = max(trial_runs.values(), key=lambda r: r.data.metrics["test/accuracy"])
    assert summary.best is not None
    assert summary.best["figures"]["test/accuracy"] == best.data.metrics["test/accuracy"]
    parent = mlflow.MlflowClient().get_run(summary.run_id)
    assert parent.data.tags["sweep.best_trial"] == str(summary.best["trial"])
    assert parent.data.metrics["best/test/accuracy"] == summary.best["value"]
    assert parent.data.params["sweep.runner"] == "dask"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary.run_id, "plots")}
    assert artifacts == {"plots/test_accuracy_vs_lr.png", "plots/test_accuracy_vs_batch_size.png"}
    lines = "\n".join(summary.lines())
    assert "4 trials: 4 complete; grid search on dask" in lines
    assert "trial 3: lr=0.05 batch_size=32" in lines


def test_optuna_records_a_failed_trial_goes_on_and_resumes_without_rerunning(
    tmp_path, monkeypatch, mlflow_store, prefect_server
):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    # Adam takes no momentum: the trials that draw it fail ("a bad combination"), the others train.
    options: dict[str, Any] = dict(
        space=["lr=log:0.01:0.1", "optimizer=SGD,Adam"],
        kind="optuna",
        fixed=fixed_options(tmp_path, data_dir, epochs=2, optimizer_kwargs={"momentum": 0.9}),
        workers=1,
        sampler_seed=3,  # draws SGD, Adam, SGD, then Adam
        export_best=False,
        experiment="sweep-test",
        study="optuna-test",
    )
    first = sweep(trials=3, **options)

    assert first.counts["complete"] + first.counts["pruned"] == 2
    assert first.counts["failed"] == 1
    assert len(first.failed) == 1
    assert "momentum" in first.failed[0]
    runs = {n: r for n, r in children(first.run_id).items() if n.startswith("trial ")}
    failed = [r for r in runs.values() if r.data.tags["sweep.state"] == "failed"]
    assert len(failed) == 1
    assert failed[0].info.status == "FAILED"
    assert "momentum" in failed[0].data.tags["digitflow.error"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first.run_id, "plots")}
    assert "plots/optuna_history.png" in artifacts

    # A 4-trial sweep with the same study, resumed: the three finished trials are not run again.
    resumed = sweep(trials=4, resume=True, **options)
    assert resumed.run_id == first.run_id  # the same MLflow parent run
    assert resumed.resumed
    assert resumed.ran_now == 1
    assert sum(resumed.counts.values()) == 4
    after = {n: r for n, r in children(first.run_id).items() if n.startswith("trial ")}
    assert len(after) == 4
    assert set(runs) < set(after)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "lr=0.01:0.1"], "a grid takes listed values, not ranges (lr); use --random N or --optuna N"),
        (["--grid", "colour=red,blue"], "sweep: unknown option 'colour'"),
        (["--grid", "train=mnist:train"], "sweep: train cannot be swept"),
        (["--optuna", "3"], "sweep: --optuna needs --space KEY=RANGE"),
        (["--random", "2", "--space", "lr=log:0:1"], "a log range needs a positive low bound"),
        (
            ["--grid", "lr=0.02,0.05", "--adapt", "dann", "--adapt-target", "usps:test[:1000]"],
            "sweep: --adapt is not supported in sweeps yet",
        ),
    ],
)
def test_bad_sweep_options_are_one_line(args, message, capsys):
    # in-process (a subprocess per case cost 8 s of imports); the next test runs one case as a user does
    code: int | str | None
    try:
        code = cli_main(["sweep", *args])
    except SystemExit as exit_info:
        code = exit_info.code
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert message in stderr


def test_a_bad_sweep_option_is_one_line_from_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "flows", "sweep", "--grid", "colour=red,blue"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "sweep: unknown option 'colour'" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_runner_ray_without_the_extra_is_one_line_saying_how_to_install_it():
    try:
        import prefect_ray  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("prefect-ray is installed here")
    result = subprocess.run(
        [sys.executable, "-m", "flows", "sweep", "--grid", "lr=0.02,0.05", "--runner", "ray"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "digitflow: error: --runner ray needs prefect-ray and ray, which are an optional extra: "
        "pip install -e '.[ray]'\n"
    )

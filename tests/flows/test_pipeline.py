"""The pipeline flow end to end on tiny data in the official formats, and the CLI as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import mlflow
import pytest
import torch
from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run

from digitflow.device import training_precision
from flows.cli import main as cli_main
from flows.pipeline import pipeline
from flows.summary import PipelineSummary, publish_summary
from tests.fakedata import fake_data_dir
from tracking.ui import run_url, ui_command

REPO = Path(__file__).resolve().parents[2]


def tiny_run(tmp_path: Path, data_dir: Path, **overrides):
    params = dict(
        train="mnist:train",
        test="mnist:test",
        target=["usps:test"],
        epochs=2,
        batch_size=16,
        data_dir=str(data_dir),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        offline=True,
        experiment="pipeline-test",
        epsilons=[0.0, 0.1],  # a cheap robustness task (tests/flows/test_robustness.py runs the default one)
        pgd_steps=2,
    )
    return pipeline(**{**params, **overrides})


def runs_by_name(parent_id: str) -> dict:
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    return {r.info.run_name: r for r in children}


def test_flow_logs_parent_and_child_runs(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    summary = tiny_run(tmp_path, data_dir)

    client = mlflow.MlflowClient()
    parent = client.get_run(summary.run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    # Named after what it did; the Prefect flow run's own (random) name is kept as a tag.
    assert parent.info.run_name == "batch_size=16 · LeNet mnist:train epochs=2"
    assert tags["prefect.flow_run_id"]
    assert tags["git.commit"]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        assert tags["prefect.flow_run_name"] == prefect.read_flow_run(UUID(tags["prefect.flow_run_id"])).name
    # The Source column says the flow, on the parent and on every child.
    assert tags["mlflow.source.name"] == "digitflow-pipeline"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert {"dataset.train.digest", "dataset.test.digest", "dataset.target.usps.digest"} <= set(tags)
    params = parent.data.params
    assert params["train.epochs"] == "2"
    assert params["data.train"] == "mnist:train"
    assert params["train.optimizer.name"] == "SGD"
    assert params["train.optimizer.kwargs.momentum"] == "0.9"
    assert {"test/accuracy", "test/loss", "cross/usps/accuracy"} <= set(parent.data.metrics)

    children = runs_by_name(summary.run_id)
    assert {"train", "evaluate", "cross-domain usps:test", "export"} <= set(children)
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert {c.data.tags["mlflow.source.name"] for c in children.values()} == {"digitflow-pipeline"}
    # The experiment is a model-training one, and the columns its description recommends exist.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    recommended = description_columns(experiment.tags["mlflow.note.content"])
    assert recommended["Metrics"]
    assert recommended["Parameters"]
    assert recommended["Tags"]
    assert recommended["Metrics"] <= set(parent.data.metrics)
    assert recommended["Parameters"] <= set(parent.data.params)
    assert recommended["Tags"] <= set(tags)
    train = children["train"]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "train/accuracy")] == [1, 2]
    assert train.inputs.dataset_inputs[0].dataset.digest == tags["dataset.train.digest"][:16]
    expected_precision = training_precision(torch.device("cpu"), amp=True)
    assert train.data.tags["train.precision"] == expected_precision
    assert f"on cpu ({expected_precision})" in "\n".join(summary.lines())
    assert summary.test_accuracy == parent.data.metrics["test/accuracy"]
    assert "usps" in summary.cross_accuracy
    # where the wall time went: every phase, the work inside, the pipeline's own time
    times = {k: v for k, v in parent.data.metrics.items() if k.startswith("time/")}
    phases = ("startup", "tracking", "data", "training", "evaluation", "cross_domain", "robustness", "export")
    assert {f"time/{p}" for p in phases} | {"time/wall", "time/own", "time/work/training"} <= set(times)
    assert {"time/export/verification", "time/export/registration"} <= set(times)
    assert times["time/own"] == pytest.approx(times["time/wall"] - times["time/work"])
    assert 0 < times["time/work/training"] <= times["time/training"]
    assert [line for line in summary.lines() if line.startswith("time: ")]
    assert Path(summary.exported["torchscript_path"]).is_file()
    # The model logged by the train task loads back and predicts a batch of any size.
    logged = mlflow.search_logged_models(filter_string="name = 'model'", output_format="list")
    model = mlflow.pytorch.load_model(logged[0].model_uri)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # Prefect: the summary as a markdown artifact and a link to the MLflow run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(tags["prefect.flow_run_id"])])
            )
        )
    by_key = {a.key: a.data for a in artifacts}
    assert isinstance(by_key["digitflow-summary"], str)  # markdown
    assert isinstance(by_key["mlflow-run"], str)  # a link, as markdown
    assert f"{summary.test_accuracy:.4f}" in by_key["digitflow-summary"]
    assert summary.run_id in by_key["mlflow-run"]


def description_columns(note: str) -> dict[str, set[str]]:
    """``- Metrics: `a`, `b`` lines of the experiment description -> {"Metrics": {"a", "b"}}; names with
    a placeholder (``cross/<dataset>/accuracy``) are examples of a pattern, left out."""
    columns: dict[str, set[str]] = {}
    kind = None
    for line in note.splitlines():
        if line.startswith("- "):
            kind, _, line = line[2:].partition(":")
        elif not line.startswith("  "):  # not a bullet's continuation: the list is over
            kind = None
        if kind:
            columns.setdefault(kind, set()).update(n for n in re.findall(r"`([^`]+)`", line) if "<" not in n)
    return columns


def test_link_artifact_is_prefects_link_to_the_store_and_port_of_the_run(tmp_path, monkeypatch, prefect_server):
    store = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    summary = PipelineSummary(
        run_id="abc123",
        experiment_id="7",
        artifact_uri="file:///x",
        run_url=run_url("abc123", "7"),
        tracking_uri=store,
        test_accuracy=0.5,
        test_loss=1.0,
        ui_command=ui_command(),
    )

    @flow
    def publish() -> str:
        publish_summary(summary)
        return str(runtime_flow_run.id)

    flow_run_id = publish()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]))
        )
    link = {a.key: a for a in artifacts}["mlflow-run"]
    # What prefect.artifacts.create_link_artifact stores: "[text](link)", nothing else.
    assert (
        link.data
        == "[MLflow run abc123](http://127.0.0.1:5123/#/experiments/7/runs/abc123?workflowType=machine_learning)"
    )
    assert link.description is not None
    assert f"`MLFLOW_TRACKING_URI={store} MLFLOW_PORT=5123 make ui`" in link.description


def test_divergence_fails_flow_and_runs_but_keeps_logged_data(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    state = tiny_run(tmp_path, data_dir, optimizer_kwargs={"lr": 1e12}, return_state=True)
    assert state.is_failed()
    assert "loss became" in state.message

    [parent] = mlflow.search_runs(
        experiment_names=["pipeline-test"], filter_string="tags.`mlflow.parentRunId` IS NULL", output_format="list"
    )
    assert parent.info.status == "FAILED"
    children = runs_by_name(parent.info.run_id)
    assert children["train"].info.status == "FAILED"
    assert children["prepare mnist:train"].info.status == "FINISHED"
    assert parent.data.params["train.optimizer.kwargs.lr"] == "1000000000000.0"


def test_fashion_mnist_defaults_follow_the_dataset_and_need_no_usps_file(
    tmp_path, monkeypatch, mlflow_store, prefect_server
):
    import shutil

    from digitflow.config import AUGMENT_BY_FAMILY, flatten

    data_dir = fake_data_dir(tmp_path, monkeypatch)
    shutil.rmtree(data_dir / "USPS")  # offline, and no USPS file: none is needed
    summary = tiny_run(tmp_path, data_dir, train="fashion-mnist:train", test=None, target=None)

    parent = mlflow.MlflowClient().get_run(summary.run_id)
    params, tags = parent.data.params, parent.data.tags
    assert params["data.test"] == "fashion-mnist:test"
    assert params["data.targets"] == "[]"
    assert summary.cross_accuracy == {}
    assert "cross-domain" not in " ".join(runs_by_name(summary.run_id))
    # the params record the augmentation used, the default of the clothing family, and a tag says so
    expected = flatten(AUGMENT_BY_FAMILY["clothing"], prefix="train.augment.")
    assert {k: params[k] for k in expected} == {k: str(v) for k, v in expected.items()}
    assert tags["train.augment.default_for"] == "clothing"


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_option():
    result = cli("run", "--help")
    assert result.returncode == 0
    for option in (
        "--train",
        "--test",
        "--target",
        "--target-preprocess",
        "--epochs",
        "--optimizer",
        "--opt",
        "--param-group",
        "--scheduler",
        "--augment",
        "--device",
        "--offline",
        "--resume",
        "--data-dir",
        "--adapt",
        "--adapt-target",
        "--adapt-opt",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "mnst:train"], "unknown dataset 'mnst'"),
        (["--test", "mnist:test[5:x]"], "mnist:test[5:x]"),
        (["--opt", "lr"], "--opt takes KEY=VALUE"),
        (["--optimizer", "Adamm"], "unknown optimizer 'Adamm'"),
        (["--scheduler", "Nope"], "unknown scheduler 'Nope'"),
        (["--scheduler", "StepLR"], "--sched KEY=VALUE"),
        (["--augment", "Foo"], "'Foo'"),
        (["--epochs", "0"], "epochs and batch size must be at least 1"),
        (["--param-group", "foo:lr=0.1"], "parameter group 'foo' matches no parameter"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (
            ["--output-dir", "/dev/null/out"],
            "cannot write to the output dir /dev/null/out (Not a directory); choose another with --output-dir",
        ),
        (["--experiment", ""], "the MLflow experiment name is empty; name one with --experiment NAME"),
        (["--adapt-target", "usps:test[:1000]"], "--adapt-target needs --adapt METHOD (dann)"),
        (["--adapt", "dann"], "--adapt dann needs --adapt-target SPEC"),
        (["--adapt", "dann", "--adapt-target", "fashion-mnist:test"], "adapt between datasets of the same classes"),
    ],
)
def test_bad_input_is_one_line_and_exits_non_zero(args, message, command):
    code, _, stderr = command("run", *args)  # in-process; the next test runs a real command
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr


def test_missing_data_offline_is_one_line_error(tmp_path):
    missing = tmp_path / "no-such-dir"
    result = cli(
        "run",
        "--train",
        "mnist:test[:8000]",
        "--test",
        "mnist:test[8000:]",
        "--offline",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        env={"DIGITFLOW_DATA_DIR": str(missing), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "Prefect" not in output  # checked before Prefect starts
    errors = [line for line in result.stderr.splitlines() if line.startswith("digitflow: error:")]
    assert len(errors) == 1
    assert "t10k-images-idx3-ubyte.gz" in errors[0]
    assert str(missing / "MNIST" / "raw") in errors[0]
    assert "--offline" in errors[0]


@pytest.mark.parametrize("kind", ["not a checkpoint", "another model"])
def test_resuming_from_a_bad_checkpoint_is_one_line_error(tmp_path, kind, mlflow_store, prefect_server, capsys):
    # in-process (test_missing_data_offline_is_one_line_error runs a real command): the flow starts,
    # and its train task refuses the checkpoint
    import torch

    from digitflow.training.checkpoint import save_checkpoint

    bad = tmp_path / "bad.pt"
    if kind == "not a checkpoint":
        bad.write_bytes(b"these bytes are no checkpoint" * 10)
        expected = "is not a digitflow checkpoint"
    else:
        save_checkpoint(bad, {"model_name": "Generator", "model": {"w": torch.zeros(1)}})
        expected = "was written for model 'Generator', not 'LeNet'"
    data = REPO.parent / "shared" / "data"
    if not (data / "MNIST").is_dir():
        pytest.skip(f"needs the real MNIST test files in {data}")
    code = cli_main(
        [
            "run",
            "--train",
            "mnist:test[:500]",
            "--test",
            "mnist:test[9500:]",
            "--no-target",
            "--offline",
            "--data-dir",
            str(data),
            "--resume",
            "--checkpoint",
            str(bad),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    output = capsys.readouterr()
    assert code == 2
    errors = [line for line in output.err.splitlines() if line.startswith("digitflow: error:")]
    assert len(errors) == 1
    assert expected in errors[0]
    assert str(bad) in errors[0]
    assert "Traceback" not in output.out + output.err


def test_dann_adapts_through_the_flow_with_its_baseline_and_metrics(
    tmp_path, monkeypatch, mlflow_store, prefect_server
):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    summary = tiny_run(
        tmp_path,
        data_dir,
        target=["usps:test[20:]"],
        adapt="dann",
        adapt_target="usps:test[:20]",
        adapt_options={"domain_hidden": 16},
    )
    client = mlflow.MlflowClient()
    parent = client.get_run(summary.run_id)
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    assert {"cross/usps_test_20/accuracy", "cross/usps_test_20/source_only_accuracy"} <= set(metrics)
    assert parent.info.run_name.startswith("adapt=dann(usps:test[:20]) ")
    assert parent.data.params["adapt.method"] == "dann"
    assert parent.data.params["adapt.target"] == "usps:test[:20]"
    assert parent.data.params["adapt.domain_hidden"] == "16"
    assert parent.data.tags["dataset.adapt_target.digest"]
    children = runs_by_name(summary.run_id)
    assert {"train", "train source-only", "cross-domain usps:test[20:]"} <= set(children)
    train = children["train"]
    for name in ("adapt/domain_loss", "adapt/domain_accuracy", "adapt/lambda"):
        assert [m.step for m in client.get_metric_history(train.info.run_id, name)] == [1, 2], name
    assert "adapt/domain_loss" not in children["train source-only"].data.metrics
    assert summary.source_only_accuracy["usps_test_20"] == metrics["cross/usps_test_20/source_only_accuracy"]
    assert "(source-only " in "\n".join(summary.lines())

"""What the MLflow UI shows: experiment kind and description, run names, Source column, the way to the UI."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

import mlflow
from mlflow.entities import Experiment

from digitflow.params.run import build_config
from tracking.naming import parent_run_name
from tracking.runs import child_run, source_tags
from tracking.store import setup_tracking
from tracking.ui import run_url, ui_command

REPO = Path(__file__).resolve().parents[2]
KIND = "mlflow.experimentKind"
NOTE = "mlflow.note.content"


def experiment(name: str) -> Experiment:
    found = mlflow.get_experiment_by_name(name)
    assert found is not None, f"no experiment {name!r}"
    return found


def experiment_tags(name: str) -> dict[str, str]:
    return experiment(name).tags


def test_new_experiment_is_a_training_experiment_with_a_description(mlflow_store):
    setup_tracking("ui-new")
    tags = experiment_tags("ui-new")
    assert tags[KIND] == "custom_model_development"
    assert "test/accuracy" in tags[NOTE]
    assert "Columns" in tags[NOTE]


def test_existing_experiment_gets_the_kind_and_description(mlflow_store):
    # As earlier versions left it: no description; and a kind chosen for it elsewhere.
    experiment_id = mlflow.create_experiment("ui-old")
    mlflow.MlflowClient().set_experiment_tag(experiment_id, KIND, "genai_development")
    assert setup_tracking("ui-old") == experiment_id
    tags = experiment_tags("ui-old")
    assert tags[KIND] == "custom_model_development"
    assert "test/accuracy" in tags[NOTE]


def test_a_description_edited_in_the_ui_is_kept_and_ours_is_updated(mlflow_store):
    setup_tracking("ui-edit")
    client = mlflow.MlflowClient()
    experiment_id = experiment("ui-edit").experiment_id
    client.set_experiment_tag(experiment_id, NOTE, "my own notes")
    setup_tracking("ui-edit")
    assert experiment_tags("ui-edit")[NOTE] == "my own notes"
    # An older text digitflow wrote (its digest recorded beside it), never edited: replaced by the new one.
    old = "digitflow's description of an earlier version"
    client.set_experiment_tag(experiment_id, NOTE, old)
    client.set_experiment_tag(experiment_id, "digitflow.note_sha256", hashlib.sha256(old.encode()).hexdigest())
    setup_tracking("ui-edit")
    assert "test/accuracy" in experiment_tags("ui-edit")[NOTE]


def config(**overrides):
    params = dict(
        train="mnist:test[:8000]",
        test="mnist:test[8000:]",
        target=["usps:test"],
        epochs=1,
        batch_size=64,
        device="cpu",
        amp=True,
        data_dir="/somewhere/data",
        cache_dir="/somewhere/cache",
        offline=True,
        output_dir="/somewhere/out",
    )
    return build_config(**{**params, **overrides})


def test_parent_run_name_says_model_train_spec_and_distinguishing_options():
    plain = parent_run_name(config())
    assert plain == "test=mnist:test[8000:] · LeNet mnist:test[:8000] epochs=1"  # not the default held-out split
    assert "somewhere" not in plain
    assert "offline" not in plain
    assert "device" not in plain
    tuned = parent_run_name(config(optimizer_kwargs={"lr": 0.01, "momentum": 0.9}, augment=[], seed=3, target=[]))
    assert {"lr=0.01", "augment=none", "seed=3", "target=none"} <= set(tuned.split())
    assert "momentum=0.9" not in tuned  # the default, so not distinguishing
    other = parent_run_name(
        config(optimizer="AdamW", optimizer_kwargs={"lr": 1e-3}, scheduler="none", export_mode="trace")
    )
    assert {"optimizer=AdamW", "lr=0.001", "scheduler=none", "export=trace"} <= set(other.split())
    assert tuned.endswith(" · LeNet mnist:test[:8000] epochs=1")
    # The runs list shows about 20 characters of a name: runs that differ must differ there.
    names = [plain, tuned, other, parent_run_name(config(seed=1))]
    assert len({name[:20] for name in names}) == len(names)


def test_source_names_the_flow_and_child_runs_inherit_it(mlflow_store):
    assert source_tags("digitflow-pipeline", "mnist-nightly") == {
        "mlflow.source.name": "digitflow-pipeline/mnist-nightly",
        "mlflow.source.type": "JOB",
    }
    setup_tracking("ui-source")
    with (
        mlflow.start_run(tags=source_tags("digitflow-pipeline")) as parent,
        child_run("train", parent.info.run_id) as child,
    ):
        pass
    tags = mlflow.get_run(child.info.run_id).data.tags
    assert tags["mlflow.source.name"] == "digitflow-pipeline"
    assert tags["mlflow.source.type"] == "LOCAL"


def fake_mlflow(tmp_path: Path) -> Path:
    """A stand-in ``mlflow`` executable that records its arguments instead of serving."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "mlflow"
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    script.chmod(0o755)
    return bin_dir


def run_ui_command(command: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run what ``make ui`` runs (mlflow/ui.sh) with the environment ``command`` sets."""
    words = shlex.split(command)
    assert words[-2:] == ["make", "ui"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_PORT")}
    env.update(dict(w.split("=", 1) for w in words[:-2]))
    env["PATH"] = f"{fake_mlflow(tmp_path)}:{env['PATH']}"
    result = subprocess.run([str(REPO / "mlflow" / "ui.sh")], env=env, capture_output=True, text=True, timeout=30)
    recorded = tmp_path / "args"
    args = recorded.read_text().splitlines() if recorded.exists() else []
    recorded.unlink(missing_ok=True)
    return result, args


def test_ui_command_and_link_lead_to_the_store_and_port_of_the_run(tmp_path, monkeypatch):
    store = tmp_path / "elsewhere"
    store.mkdir()
    (store / "mlflow.db").touch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    url = run_url("abc", "7")
    assert url == "http://127.0.0.1:5123/#/experiments/7/runs/abc?workflowType=machine_learning"
    result, args = run_ui_command(ui_command(), tmp_path)
    assert result.returncode == 0, result.stderr
    served = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "ui"
    assert served["--backend-store-uri"] == f"sqlite:///{store / 'mlflow.db'}"
    assert served["--default-artifact-root"] == str(store / "artifacts")
    assert (served["--host"], served["--port"]) == ("127.0.0.1", "5123")


def test_ui_command_for_the_project_store_is_plain_make_ui(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    assert ui_command() == "make ui"
    assert run_url("abc", "1").startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc")


def test_ui_script_refuses_a_missing_store_and_a_tracking_server(tmp_path):
    missing, _ = run_ui_command(f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path / 'nope.db'} make ui", tmp_path)
    assert missing.returncode == 2
    assert "no MLflow store at" in missing.stderr
    server, args = run_ui_command("MLFLOW_TRACKING_URI=http://tracking.example:5000 make ui", tmp_path)
    assert server.returncode == 2
    assert "tracking server" in server.stderr
    assert args == []


def test_tracking_server_links_to_itself(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000/")
    assert run_url("abc", "3") == "http://tracking.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert "make ui" not in ui_command()

"""scripts/serve.py (make serve / make stop) and, end to end, the deployments it serves: a real Prefect
server, MLflow server and worker on free loopback ports in temporary folders, the nightly deployment
run on a few hundred real images, and the trigger's evaluate-and-promote making its model champion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "serve.py"


def serve_module():
    import serve  # scripts/ is on the path (pytest's pythonpath, mypy_path), as the scripts see each other

    return serve


def serve(action: str, state: Path, ports: tuple[int, int], *extra: str, env=None, timeout=600):
    command = [sys.executable, str(SERVE), action, "--state-dir", str(state)]
    command += ["--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1]), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_port_taken_by_something_else_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("start", tmp_path / "state", (port, free_port()), "--store", str(tmp_path / "store"))
    assert result.returncode == 2
    assert result.stderr == (
        f"serve: error: port {port} on 127.0.0.1 (for the Prefect server) is taken by another process; "
        "stop it, or choose another port with PREFECT_PORT=N\n"
    )
    assert not list((tmp_path / "state").glob("*.pid"))
    stopped = serve("stop", tmp_path / "state", (port, 1))
    assert stopped.stdout == "serve: nothing was running\n"


def test_a_data_folder_that_is_not_there_is_one_line_and_starts_nothing(tmp_path):
    env = {**os.environ, "DIGITFLOW_DATA_DIR": str(tmp_path / "nope")}
    result = serve("start", tmp_path / "state", (free_port(), free_port()), "--store", str(tmp_path / "store"), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"serve: error: DIGITFLOW_DATA_DIR={tmp_path / 'nope'} is not a folder")
    assert result.stderr.count("\n") == 1
    assert not list((tmp_path / "state").glob("*.pid"))


@pytest.mark.slow
def test_served_nightly_run_is_promoted_by_the_trigger(tmp_path, shared_data):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state, store, ports = tmp_path / "state", tmp_path / "store", (free_port(), free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # this checkout's code
    env["DIGITFLOW_DATA_DIR"] = str(shared_data)
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # the worker looks for new flow runs every second, not every 10
    deploy = ["--deploy", "mnist-nightly", "--deploy", "evaluate-and-promote"]  # not usps-to-mnist: no USPS train here
    api, tracking = f"http://127.0.0.1:{ports[0]}/api", f"http://127.0.0.1:{ports[1]}"
    serve_py = serve_module()
    try:
        started = serve("start", state, ports, "--store", str(store), *deploy, env=env)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (state / "logs").glob("*.log"))
        assert started.returncode == 0, started.stderr + logs
        assert f"Prefect UI: http://127.0.0.1:{ports[0]}" in started.stdout
        assert f"MLflow UI:  {tracking}/" in started.stdout
        assert f"logs: {state / 'logs'}/" in started.stdout
        again = serve("start", state, ports, "--store", str(store), env=env)
        assert again.returncode == 0
        assert again.stdout.startswith("serve: already running: prefect-server (pid ")

        parameters = dict(
            train="mnist:test[:300]",
            test="mnist:test[9700:]",
            target=["usps:test[:300]"],
            epochs=1,
            offline=True,
            cache_dir=str(tmp_path / "cache"),
            output_dir=str(tmp_path / "out"),
            experiment="e2e",
        )
        with temporary_settings({PREFECT_API_URL: api}):
            nightly = run_deployment("digitflow-pipeline/mnist-nightly", parameters=parameters, timeout=420)
            assert isinstance(nightly, FlowRun)  # called outside an event loop: the sync form
            worker_log = state / "logs" / "worker.log"
            assert nightly.state is not None
            assert nightly.state.is_completed(), f"{nightly.state}\n{worker_log.read_text()[-4000:]}"
            promoted = None
            deadline = time.monotonic() + 240
            with get_client(sync_client=True) as prefect:
                while time.monotonic() < deadline:
                    runs = prefect.read_flow_runs(
                        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["evaluate-and-promote"]))
                    )
                    if runs and runs[0].state is not None and runs[0].state.is_final():
                        promoted = runs[0]
                        break
                    time.sleep(2)
            assert promoted is not None, f"evaluate-and-promote did not run\n{worker_log.read_text()[-4000:]}"
            assert promoted.state is not None
            assert promoted.state.is_completed(), f"{promoted.state}\n{worker_log.read_text()[-4000:]}"
            assert promoted.parameters["flow_run_id"] == f"prefect.flow-run.{nightly.id}"

        mlflow_client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        champion = mlflow_client.get_model_version_by_alias("digitflow-lenet", "champion")
        assert champion.run_id is not None
        assert mlflow_client.get_run(champion.run_id).data.tags["prefect.flow_run_id"] == str(nightly.id)
        assert champion.tags["promotion.decision"] == "promoted"
    finally:
        stopped = serve("stop", state, ports)
        print(stopped.stdout, stopped.stderr)
    assert stopped.stdout.startswith("serve: stopped ")
    assert serve_py.marked_processes(state.resolve()) == []  # nothing the servers or the worker started is left
    assert not list(state.glob("*.pid"))

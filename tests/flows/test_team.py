"""The team setup (scripts/team.py: make team / make team-stop) run for real: PostgreSQL 15, the S3 store,
MLflow with basic auth and Prefect with its auth string on free loopback ports in temporary folders; the
nightly deployment twice at once on the two workers, the trigger's promotions; then the attacks the
setup must refuse, and where credentials must never appear. Skipped, saying why, where PostgreSQL's
binaries, the team extra or the official test files are absent."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, free_port

REPO = Path(__file__).resolve().parents[2]
TEAM = REPO / "scripts" / "team.py"
PG_BIN = Path(os.environ.get("DIGITFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))


def needs_team() -> None:
    """Skip, with the reason, where the team setup cannot start."""
    import importlib.util

    if not (PG_BIN / "postgres").is_file():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/postgres missing: apt-get install postgresql-15)")
    for module in ("moto", "psycopg2", "boto3", "flask_wtf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the team extra is not installed ({module} missing): pip install -e '.[team]'")


@dataclass
class Team:
    state: Path
    secrets: Path
    ports: dict[str, int]
    env: dict[str, str]
    started: subprocess.CompletedProcess[str]

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    def run(self, action: str, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(TEAM), action, "--state-dir", str(self.state), "--secrets", str(self.secrets)]
        for name, port in self.ports.items():
            command += [f"--{name}-port", str(port)]
        return subprocess.run(
            [*command, *extra], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def credentials(self, file: str) -> dict[str, str]:
        from team import read_env_file  # scripts/ is on pytest's pythonpath

        return read_env_file(self.secrets / file)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (self.state / "logs").glob("*.log")
        )


@contextlib.contextmanager
def running_team() -> Iterator[Team]:
    """The whole setup, started for the test and stopped after it: nothing left."""
    needs_team()
    shared_data = SHARED_DATA
    if not (shared_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data not found at {shared_data} (see docs/data.md)")
    root = Path(tempfile.mkdtemp(prefix="digitflow-team-"))  # not pytest's tmp_path: the postgres user must reach it
    root.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # this checkout's code
    env["DIGITFLOW_DATA_DIR"] = str(shared_data)
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # the workers look for flow runs every second, not every 10
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DIGITFLOW_CREDENTIALS"):
        env.pop(key, None)
    ports = {name: free_port() for name in ("pg", "s3", "mlflow", "prefect")}
    setup = Team(state=root / "state", secrets=root / "secrets", ports=ports, env=env, started=None)  # type: ignore[arg-type]
    try:
        setup.started = setup.run("start", "--deploy", "mnist-nightly", "--deploy", "evaluate-and-promote")
        assert setup.started.returncode == 0, setup.started.stderr + setup.logs()
        yield setup
    finally:
        stopped = setup.run("stop", timeout=120)
        import serve

        left = serve.marked_processes(setup.state.resolve())
        logs = setup.logs() if (setup.state / "logs").is_dir() else ""
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert left == [], f"team-stop left processes {left}"
    assert "pid" in stopped.stdout, logs


PARAMETERS = dict(
    train="mnist:test[:300]",
    test="mnist:test[9700:]",
    target=["usps:test[:300]"],
    epochs=1,
    offline=True,
    attack=["none"],
)


@pytest.mark.slow
def test_the_team_setup_runs_its_deployments_refuses_intruders_and_leaks_no_secret(
    tmp_path, monkeypatch, command, capsys
):
    """One test, one setup (a start costs most of a minute): pytest-xdist would start a setup per process
    for tests that shared a module fixture (its xdist_group does not group on pytest 9.2)."""
    with running_team() as team:
        two_nightly_runs_at_once_on_two_workers_are_promoted_by_the_rule(team, tmp_path, monkeypatch)
        requests_without_the_right_credentials_are_refused(team)
        every_server_listens_on_loopback_only(team)
        capsys.readouterr()  # what the steps before printed (download progress): the command's own output next
        with monkeypatch.context() as patch:
            the_command_says_in_one_line_what_credentials_are_missing(team, command, patch)
        no_credential_in_logs_params_tags_or_flow_run_parameters(team, monkeypatch)


def two_nightly_runs_at_once_on_two_workers_are_promoted_by_the_rule(team, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    admin = team.credentials("admin.env")
    again = team.run("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("team: already running")
    with temporary_settings({PREFECT_API_URL: team.api, PREFECT_API_AUTH_STRING: admin["PREFECT_API_AUTH_STRING"]}):
        submitted = [
            run_deployment(
                "digitflow-pipeline/mnist-nightly",
                parameters={**PARAMETERS, "seed": seed, "output_dir": str(tmp_path / f"out{seed}"),
                            "cache_dir": str(tmp_path / "cache")},
                timeout=0,
            )
            for seed in (1, 2)
        ]  # fmt: skip
        deadline = time.monotonic() + 420
        with get_client(sync_client=True) as prefect:
            while time.monotonic() < deadline:
                runs = [prefect.read_flow_run(run.id) for run in submitted]  # type: ignore[union-attr]
                if all(run.state is not None and run.state.is_final() for run in runs):
                    break
                time.sleep(2)
            for run in runs:
                assert run.state is not None
                assert run.state.is_completed(), f"{run.state}\n{team.logs()}"
            promotions: list = []
            while time.monotonic() < deadline:
                promotions = prefect.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["evaluate-and-promote"]))
                )
                if len(promotions) == 2 and all(p.state is not None and p.state.is_final() for p in promotions):
                    break
                time.sleep(2)
    assert len(promotions) == 2, team.logs()
    for promotion in promotions:
        assert promotion.state.is_completed(), f"{promotion.state}\n{team.logs()}"
    # one run on each worker: each worker's log names the flow run it took
    worker_logs = [(team.state / "logs" / f"worker-{i}.log").read_text() for i in (1, 2)]
    taken = [
        [
            f"submitting flow run '{run.id}'" in log and f"Aborted submission of flow run '{run.id}'" not in log
            for run in runs
        ]
        for log in worker_logs
    ]
    assert sorted(taken) == [[False, True], [True, False]], taken
    first, second = runs  # and at the same time
    assert first.start_time is not None and second.start_time is not None  # noqa: PT018
    assert first.end_time is not None and second.end_time is not None  # noqa: PT018
    assert first.start_time < second.end_time
    assert second.start_time < first.end_time

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin["MLFLOW_TRACKING_PASSWORD"])
    client = MlflowClient(tracking_uri=team.mlflow, registry_uri=team.mlflow)
    versions = client.search_model_versions("name = 'digitflow-lenet'")
    assert len(versions) == 2
    parents = {v.version: client.get_run(str(v.run_id)) for v in versions}
    for version in versions:  # every promotion decision is recorded on its model version
        assert version.tags["promotion.decision"] in ("promoted", "kept"), version.tags
        assert "test/accuracy" in parents[version.version].data.metrics
    champion = client.get_model_version_by_alias("digitflow-lenet", "champion")
    assert champion.tags["promotion.decision"] == "promoted"
    # the champion is the best by the rule: no other candidate would replace it
    from digitflow.config import PromotionConfig
    from digitflow.evaluation.promotion import decide

    figures = {number: parent.data.metrics for number, parent in parents.items()}
    for version in versions:
        if version.version != champion.version:
            assert not decide(figures[version.version], figures[champion.version], PromotionConfig()).promote
    import mlflow

    for number, parent in parents.items():  # the artifacts went through the tracking server into the bucket, and back
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        logged = {child.info.run_name: [a.path for a in client.list_artifacts(child.info.run_id)] for child in children}
        assert len(logged) >= 4, logged
        assert sum(map(len, logged.values())) >= 4, logged
        # the version's files through the server (not models:/, which would need mlflow.set_registry_uri: it
        # also sets MLFLOW_REGISTRY_URI in os.environ, and later tests of this process would use this registry)
        source = client.get_model_version_download_uri("digitflow-lenet", str(number))
        model = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, tracking_uri=team.mlflow, dst_path=str(tmp_path / f"model{number}")
            )
        )
        assert any(model.rglob("*.pt")) or any(model.rglob("MLmodel")), list(model.rglob("*"))
    import boto3

    secrets = team.credentials("team.env")
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{team.ports['s3']}",
        aws_access_key_id=secrets["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secrets["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="digitflow-artifacts").get("Contents", [])]
    assert any(key.endswith("lenet.pt") or "model" in key for key in keys), keys[:20]


def request(url: str, auth: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of one request (GET, or POST with a JSON body)."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def requests_without_the_right_credentials_are_refused(team):
    admin = team.credentials("admin.env")
    added = team.run("user", "bob", timeout=120)
    assert added.returncode == 0, added.stderr
    assert str(team.secrets / "users" / "bob.env") in added.stdout
    bob = team.credentials("users/bob.env")
    assert bob["MLFLOW_TRACKING_PASSWORD"] not in added.stdout + added.stderr
    root = f"{admin['MLFLOW_TRACKING_USERNAME']}:{admin['MLFLOW_TRACKING_PASSWORD']}"
    # an experiment only the admin holds: bob is not granted it
    created = request(f"{team.mlflow}/api/2.0/mlflow/experiments/create", root, {"name": "admins-only"})
    assert created in (200, 400)  # 400: made by an earlier run of this test on the same setup
    search = f"{team.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=admins-only"
    tried = {
        "MLflow without credentials": (request(search), 401),
        "MLflow with a wrong password": (request(search, "admin:wrong"), 401),
        "MLflow with an unknown user": (request(search, f"mallory:{admin['MLFLOW_TRACKING_PASSWORD']}"), 401),
        "MLflow, a user without permission": (request(search, f"bob:{bob['MLFLOW_TRACKING_PASSWORD']}"), 403),
        "Prefect without the auth string": (request(f"{team.api}/flow_runs/filter", None, {}), 401),
        "Prefect with a wrong auth string": (request(f"{team.api}/flow_runs/filter", "wrong", {}), 401),
    }  # fmt: skip
    refused = {what: got for what, (got, want) in tried.items() if got == want}
    assert refused.keys() == tried.keys(), {what: got for what, (got, _) in tried.items()}
    print(f"refused {len(refused)} of {len(tried)} unauthenticated or unauthorised requests")
    # the protections are on, not the servers down: the right credentials get in
    assert request(search, root) == 200
    assert request(f"{team.api}/flow_runs/filter", admin["PREFECT_API_AUTH_STRING"], {}) == 200


def every_server_listens_on_loopback_only(team):
    import psutil
    import serve

    pids = set(serve.marked_processes(team.state.resolve()))
    listening = {}
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[conn.laddr.port] = conn.laddr.ip
        except psutil.NoSuchProcess:
            continue
    expected = {team.ports[name] for name in ("pg", "s3", "mlflow", "prefect")}
    assert expected <= listening.keys(), listening
    assert set(listening.values()) == {"127.0.0.1"}, listening


def the_command_says_in_one_line_what_credentials_are_missing(team, command, monkeypatch):
    bob = team.credentials("worker.env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.mlflow)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DIGITFLOW_CREDENTIALS"):
        monkeypatch.delenv(key, raising=False)
    code, _, err = command("compare")
    assert code != 0
    assert err == (
        f"digitflow: error: the MLflow tracking server at {team.mlflow} needs a user and password (401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or DIGITFLOW_CREDENTIALS=FILE "
        "(make team-user writes one)\n"
    )
    # a password in the URI: used, and never printed as it is
    password = bob["MLFLOW_TRACKING_PASSWORD"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://worker:{password}@127.0.0.1:{team.ports['mlflow']}")
    code, out, err = command("compare", "--experiment", "no-such-experiment")
    assert password not in out + err
    assert code != 0
    assert "no experiment 'no-such-experiment' in " + team.mlflow in err, err
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "worker")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.mlflow)
    code, _, err = command("compare")
    assert err.startswith(
        f"digitflow: error: the MLflow tracking server at {team.mlflow} refused the password of user worker (401)"
    )


def no_credential_in_logs_params_tags_or_flow_run_parameters(team, monkeypatch):
    """After the nightly runs: what they wrote."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    values = {v for file in ("team.env", "admin.env", "worker.env") for k, v in team.credentials(file).items()
              if "PASSWORD" in k or "AUTH_STRING" in k or "SECRET" in k}  # fmt: skip
    assert len(values) >= 5
    texts = {p.name: p.read_text(errors="replace") for p in (team.state / "logs").glob("*.log")}
    texts["start output"] = team.started.stdout + team.started.stderr
    admin = team.credentials("admin.env")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin["MLFLOW_TRACKING_PASSWORD"])
    client = MlflowClient(tracking_uri=team.mlflow)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        texts[f"run {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags])
    settings = {PREFECT_API_URL: team.api, PREFECT_API_AUTH_STRING: admin["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(settings), get_client(sync_client=True) as prefect:
        for flow_run in prefect.read_flow_runs():
            texts[f"flow run {flow_run.name}"] = json.dumps([flow_run.parameters, flow_run.job_variables], default=str)
    assert any(name.startswith("run ") for name in texts)
    assert any(name.startswith("flow run") for name in texts)
    leaks = [(name, value[:4] + "...") for name, text in texts.items() for value in values if value in text]
    assert leaks == []

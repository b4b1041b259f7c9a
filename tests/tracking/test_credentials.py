"""tracking/credentials.py and the one-line answers to a server that refuses us (tracking.store.server_problem,
flows.prefect_access.server_problem), against a small local HTTP server that answers as an authenticated
MLflow or Prefect server does; mlflow/ui.sh never prints a password."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracking.credentials import CredentialsError, load_credentials, redact, split_uri_credentials

REPO = Path(__file__).resolve().parents[2]


def test_a_credentials_file_sets_what_the_environment_does_not(tmp_path):
    file = tmp_path / "alice.env"
    file.write_text(
        "# comment\nMLFLOW_TRACKING_USERNAME=alice\nMLFLOW_TRACKING_PASSWORD=p=ss\n"
        "PREFECT_API_AUTH_STRING=token\nMLFLOW_TRACKING_URI=http://127.0.0.1:5000\nOTHER=ignored\n"
    )
    env = {"DIGITFLOW_CREDENTIALS": str(file), "MLFLOW_TRACKING_USERNAME": "bob"}
    load_credentials(env)
    assert env == {
        "DIGITFLOW_CREDENTIALS": str(file),
        "MLFLOW_TRACKING_USERNAME": "bob",  # the environment wins
        "MLFLOW_TRACKING_PASSWORD": "p=ss",
        "PREFECT_API_AUTH_STRING": "token",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }


def test_a_credentials_file_that_cannot_be_read_is_one_line(tmp_path):
    with pytest.raises(CredentialsError) as info:
        load_credentials({"DIGITFLOW_CREDENTIALS": str(tmp_path / "nope.env")})
    assert str(info.value) == (
        f"DIGITFLOW_CREDENTIALS={tmp_path / 'nope.env'}: cannot read it (No such file or directory); give the "
        "credentials file make team-user wrote, or unset it"
    )


def test_a_password_in_the_tracking_uri_moves_out_of_it():
    env = {"MLFLOW_TRACKING_URI": "http://alice:se%40cret@127.0.0.1:5000/"}
    split_uri_credentials(env)
    assert env == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000/",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "se@cret",
    }
    local = {"MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db"}
    split_uri_credentials(local)
    assert local == {"MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db"}


def test_redact():
    assert redact("http://alice:secret@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("postgresql://mlflow:pw@db/mlflow") == "postgresql://mlflow:***@db/mlflow"
    assert redact("http://host:5000") == "http://host:5000"
    assert redact("http://alice:secret@host", keep_user=False) == "http://host"


class Refusing(http.server.BaseHTTPRequestHandler):
    """/health answers; everything else wants ``Basic YWxpY2U6cmlnaHQ=`` (alice:right), and alice may not
    read the experiment ``private``."""

    def do_GET(self) -> None:
        if self.path in ("/health", "/api/health"):
            return self.answer(200)
        if self.headers.get("Authorization") not in ("Basic YWxpY2U6cmlnaHQ=", "Basic dG9rZW4="):
            return self.answer(401)
        if "experiment_name=private" in self.path:
            return self.answer(403)
        return self.answer(200)

    def answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_tracking_server_refusing_us_is_one_line_naming_what_to_set(refusing_server, monkeypatch):
    from tracking.store import server_problem

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert server_problem(refusing_server) == (
        f"the MLflow tracking server at {refusing_server} needs a user and password (401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or DIGITFLOW_CREDENTIALS=FILE "
        "(make team-user writes one)"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    problem = server_problem(refusing_server)
    assert problem == (
        f"the MLflow tracking server at {refusing_server} refused the password of user alice (401); check "
        "MLFLOW_TRACKING_PASSWORD (or the file DIGITFLOW_CREDENTIALS names)"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right")
    assert server_problem(refusing_server) is None
    assert server_problem(refusing_server, experiment="digitflow") is None
    assert server_problem(refusing_server, experiment="private") == (
        f"the MLflow tracking server at {refusing_server} refused user alice on experiment private (403: no "
        "permission); an admin grants it (make team-user NAME=... grants the flows' experiments and models)"
    )


def test_the_prefect_server_refusing_us_is_one_line(refusing_server, monkeypatch):
    from flows.prefect_access import server_problem

    api = refusing_server + "/api"
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    assert server_problem(api) == (
        f"the Prefect server at {api} needs its API auth string (401): set PREFECT_API_AUTH_STRING, or "
        "DIGITFLOW_CREDENTIALS=FILE (make team-user writes one)"
    )
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "wrong")
    assert server_problem(api) == (
        f"the Prefect server at {api} refused the API auth string (401); check PREFECT_API_AUTH_STRING"
    )
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "token")
    assert server_problem(api) is None


def test_make_ui_never_prints_a_password():
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://alice:secret@127.0.0.1:5000"}
    result = subprocess.run([str(REPO / "mlflow" / "ui.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "secret" not in result.stdout + result.stderr
    assert "(http://alice:***@127.0.0.1:5000)" in result.stderr


def test_make_ui_follows_the_credentials_file_digitflow_reads(tmp_path):
    credentials = tmp_path / "alice.env"
    credentials.write_text(
        "# a team setup's user\nMLFLOW_TRACKING_URI=http://127.0.0.1:5999\nMLFLOW_TRACKING_PASSWORD=secret\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DIGITFLOW_CREDENTIALS"] = str(credentials)
    result = subprocess.run([str(REPO / "mlflow" / "ui.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2  # the team's server serves its own UI: no local one on another store
    assert "is a tracking server (http://127.0.0.1:5999)" in result.stderr
    assert "secret" not in result.stdout + result.stderr

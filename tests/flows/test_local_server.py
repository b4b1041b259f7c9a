"""The local Prefect server that ``digitflow`` commands on one Prefect home share (flows/local_server.py).

Each test has a Prefect home of its own, so these servers are not the test session's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import local_server
from flows.local_server import LocalServer, ServerError, find_or_start, release
from tests.flows.test_interrupt import descendants

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to tell live processes from gone ones")

REPO = Path(__file__).resolve().parents[2]


def env(home: Path, **extra: str) -> dict[str, str]:
    out = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    out.pop("PREFECT_API_URL", None)
    return {**out, **extra}


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not local_server._alive(pid):
            return True
        time.sleep(0.2)
    return False


# Three commands at once on a new Prefect home: each points Prefect at the local server and runs a flow.
RUN_A_FLOW = """
from flows.local_server import use_local_server
server = use_local_server()
from prefect import flow
server.wait_ready()
print("server", server.pid, server.url, flush=True)
print("result", flow(name="hello")(lambda: 41 + 1)(), flush=True)
"""


def test_runs_started_together_on_a_new_home_share_one_server_and_all_complete(tmp_path):
    # idle 0: the server stops once the last of them has ended
    home = tmp_path / "prefect"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_A_FLOW],
            cwd=tmp_path,
            env=env(home, DIGITFLOW_PREFECT_SERVER_IDLE="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "result 42" in out, out + err
        assert "View at" not in out + err  # the server has no UI: no link to one
    servers = {line for out, _ in outputs for line in out.splitlines() if line.startswith("server ")}
    assert len(servers) == 1, servers  # one server, found by all three
    keeper = int(next(iter(servers)).split()[1])
    assert gone(keeper, within=30), "the server should stop once no command uses it"
    assert not (home / "digitflow-server" / "server.json").exists()


# A command that holds a lease on the server of FOLDER, says so, and waits to be killed.
HOLD = """
import os, sys, time
from pathlib import Path
from flows.local_server import find_or_start
find_or_start(Path(sys.argv[1]), lease=os.getpid()).wait_ready()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_server_stays_while_leased_and_stops_when_its_command_is_killed_with_sigkill(tmp_path):
    folder = tmp_path / "digitflow-server"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        env=env(tmp_path, DIGITFLOW_PREFECT_SERVER_IDLE="1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        info = json.loads((folder / "server.json").read_text())
        found = find_or_start(folder)  # another command finds it: not started twice
        assert (found.pid, found.url) == (info["pid"], info["url"])
        servers = descendants(found.pid)
        assert servers, "the keeper runs the API server as its child"
        time.sleep(3)  # leased: longer than its idle time, still there
        assert local_server._healthy(found.url)
    finally:
        holder.send_signal(signal.SIGKILL)  # its lease is left behind, with a pid that is gone
        holder.wait()
    assert gone(found.pid, within=20)
    assert all(gone(pid, within=15) for pid in servers), "no server process is left behind"
    assert not (folder / "server.json").exists()


def test_a_released_lease_stops_the_server_after_its_idle_time(tmp_path, monkeypatch):
    # the lease file alone, without a server's start: the keeper's rule, on a server that is already up
    monkeypatch.setenv("DIGITFLOW_PREFECT_SERVER_IDLE", "0")
    folder = tmp_path / "digitflow-server"
    (folder / "leases").mkdir(parents=True)
    (folder / "leases" / str(os.getpid())).write_text("")
    assert local_server._live_leases(folder) == [os.getpid()]
    release(folder, os.getpid())
    (folder / "leases" / "999999999").write_text("")  # a pid that cannot exist: removed, not counted
    assert local_server._live_leases(folder) == []
    assert list((folder / "leases").iterdir()) == []


def test_a_recorded_server_whose_pid_now_runs_something_else_is_not_used(tmp_path):
    folder = tmp_path / "digitflow-server"
    folder.mkdir()
    # this test's own pid: alive, but not a keeper (as after a reboot that gave the pid to another process)
    (folder / "server.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:9"}))
    assert local_server._running(folder) is None


def test_a_configured_server_is_used_and_nothing_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert local_server.use_local_server() is None
    assert not (tmp_path / "digitflow-server").exists()


def test_a_server_that_cannot_start_is_one_line_naming_its_log(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the database's folder should be")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{blocked}/prefect.db")
    folder = tmp_path / "digitflow-server"
    server = find_or_start(folder)
    with pytest.raises(ServerError) as failed:
        server.wait_ready(timeout=120)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("the local Prefect server did not start: ")
    assert "OperationalError" in message  # the log's exception, not uvicorn's "startup failed"
    assert str(folder / "server.log") in message


def test_a_server_that_does_not_answer_in_time_is_one_line(tmp_path):
    silent = LocalServer(os.getpid(), "http://127.0.0.1:9", tmp_path)  # alive (this process), never answers
    with pytest.raises(ServerError, match=r"did not answer within 1 s \(log: .*server\.log\)$"):
        silent.wait_ready(timeout=1)


def test_a_malformed_idle_time_is_one_line(monkeypatch):
    monkeypatch.setenv("DIGITFLOW_PREFECT_SERVER_IDLE", "ten minutes")
    with pytest.raises(ServerError, match="DIGITFLOW_PREFECT_SERVER_IDLE must be a number of seconds"):
        local_server.use_local_server()

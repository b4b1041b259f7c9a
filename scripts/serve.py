"""Start and stop the servers the project's deployments run on (``make serve``, ``make stop``).

``start``: a Prefect server (127.0.0.1:4200) and an MLflow tracking server (127.0.0.1:5000, on the
project's SQLite store ``mlflow/``, serving artifacts), the process work pool ``digitflow``,
``prefect deploy`` of prefect.yaml, and a process worker whose flow runs log to that tracking server
and read their data from ``$DIGITFLOW_DATA_DIR``. Prints the two URLs and where the logs are.
``stop``: ends exactly the processes ``start`` started: each one's process group (by its pid file),
and on Linux any process still carrying the marker ``start`` put in their environment (the flow
runs a worker starts in sessions of their own). ``status``: what runs.

A second ``start`` while they run says so and starts nothing; a port already taken by something else
is a one-line error. Everything lives in ``--state-dir`` (default ``.serve/``, git-ignored): pid files,
``logs/``, and the Prefect server's database (``prefect/``), so history survives a stop and a start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # prefect and mlflow of the environment this runs in (make: .venv/bin)
POOL = "digitflow"
MARKER = "DIGITFLOW_SERVE_STATE"  # in the environment of every process start() starts, and their children
SERVICES = ("prefect-server", "mlflow-server", "worker")  # started in this order, stopped in reverse


class ServeError(Exception):
    """A one-line reason why the servers cannot start."""


def main(argv: list[str] | None = None) -> int:
    """``serve.py {start,stop,status}``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="scripts/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default=str(ROOT / ".serve"), help="pid files, logs, Prefect's database")
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("PREFECT_PORT") or 4200))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT") or 5000))
    parser.add_argument("--store", default=str(ROOT / "mlflow"), help="MLflow store folder: mlflow.db, artifacts/")
    parser.add_argument(
        "--deploy", action="append", metavar="NAME", help="deploy only these deployments of prefect.yaml (default all)"
    )
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each server to answer")
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    try:
        if args.action == "start":
            return start(
                state, args.prefect_port, args.mlflow_port, Path(args.store).resolve(), args.deploy, args.timeout
            )
        if args.action == "stop":
            return stop(state)
        return status(state)
    except ServeError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2


def start(
    state: Path, prefect_port: int, mlflow_port: int, store: Path, deploy: list[str] | None, timeout: float
) -> int:
    """Start the servers, the pool, the deployments and the worker (see the module docstring)."""
    running = alive_services(state)
    if running:
        names = ", ".join(f"{name} (pid {pid})" for name, pid in running.items())
        print(f"serve: already running: {names}; `make stop` ends them (logs in {state / 'logs'})")
        return 0
    for port, what, variable in ((prefect_port, "Prefect", "PREFECT_PORT"), (mlflow_port, "MLflow", "MLFLOW_PORT")):
        if not port_free(port):
            raise ServeError(
                f"port {port} on 127.0.0.1 (for the {what} server) is taken by another process; "
                f"stop it, or choose another port with {variable}=N"
            )
    data_dir = os.environ.get("DIGITFLOW_DATA_DIR")
    if data_dir and not Path(data_dir).is_dir():  # else every flow run the worker starts would fail at its data step
        raise ServeError(
            f"DIGITFLOW_DATA_DIR={data_dir} is not a folder (from {Path.cwd()}); give the folder that holds "
            "the official files (MNIST/raw, USPS, ...), or leave it unset to use data/ in the checkout"
        )
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, MARKER: str(state), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PREFECT_API_URL", None)
    try:
        server_env = {**env, "PREFECT_HOME": str(state / "prefect")}
        launch(
            state,
            "prefect-server",
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            server_env,
        )
        # One worker process: with several, each would create a new store's schema at the same moment.
        # MLflow's job runner (GenAI evaluation jobs, which this project has none of) is off unless asked
        # for: it starts eight more processes, about 250 MB each.
        mlflow_env = {
            **env,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
        }
        launch(
            state,
            "mlflow-server",
            ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(store / "artifacts"),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            mlflow_env,
        )  # fmt: skip
        wait_until_up(state, "prefect-server", f"{prefect_api}/health", timeout)
        wait_until_up(state, "mlflow-server", f"{mlflow_url}/health", timeout)
        client_env = {**env, "PREFECT_API_URL": prefect_api}
        setup_log = logs / "setup.log"
        if run_quiet(["prefect", "work-pool", "inspect", POOL], client_env, setup_log) != 0:
            created = run_quiet(["prefect", "work-pool", "create", POOL, "--type", "process"], client_env, setup_log)
            check(created, f"could not create the work pool {POOL}", setup_log)
        selection = [arg for name in deploy for arg in ("--name", name)] if deploy else ["--all"]
        deployed = run_quiet(["prefect", "--no-prompt", "deploy", *selection], client_env, logs / "deploy.log")
        check(deployed, "prefect deploy failed", logs / "deploy.log")
        worker_env = {**client_env, "MLFLOW_TRACKING_URI": mlflow_url}
        if env.get("DIGITFLOW_DATA_DIR"):  # the flow runs move into the checkout: make a relative folder absolute
            worker_env["DIGITFLOW_DATA_DIR"] = str(Path(env["DIGITFLOW_DATA_DIR"]).resolve())
        launch(state, "worker", ["prefect", "worker", "start", "--pool", POOL], worker_env)
        time.sleep(2)
        if "worker" not in alive_services(state):
            raise ServeError(f"the worker exited at once; see {logs / 'worker.log'}")
    except BaseException:
        stop(state, quiet=True)
        raise
    data = worker_env.get("DIGITFLOW_DATA_DIR", "data/ in the checkout (DIGITFLOW_DATA_DIR not set)")
    print(
        "\n".join(
            [
                "digitflow servers running:",
                f"  Prefect UI: http://127.0.0.1:{prefect_port}",
                f"  MLflow UI:  {mlflow_url}/#/experiments?workflowType=machine_learning  (store {store})",
                f"  worker: pool {POOL}; its flow runs log to {mlflow_url} and read data from {data}",
                f"  logs: {logs}/",
                "use them from a shell:",
                f"  export PREFECT_API_URL={prefect_api} MLFLOW_TRACKING_URI={mlflow_url}",
                "  prefect deployment run digitflow-pipeline/mnist-nightly -p train='mnist:test[:8000]' \\",
                "    -p offline=true      # offline, on the test files; evaluate-and-promote follows",
                "  digitflow compare",
                "stop them: make stop",
            ]
        )
    )
    return 0


def launch(state: Path, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start ``command`` (from the environment's bin folder) in a session of its own, output to
    ``logs/<name>.log``, and write its pid file."""
    log = (state / "logs" / f"{name}.log").open("ab")
    process = subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() ends it and its children together
    )
    log.close()
    pid_file(state, name).write_text(json.dumps({"pid": process.pid, "command": command}))


def pid_file(state: Path, name: str) -> Path:
    """Where ``name``'s pid is kept."""
    return state / f"{name}.pid"


def alive_services(state: Path) -> dict[str, int]:
    """Service name -> pid of those whose pid file names a live process (stale pid files are removed)."""
    out = {}
    for name in SERVICES:
        path = pid_file(state, name)
        if not path.is_file():
            continue
        pid = int(json.loads(path.read_text())["pid"])
        if is_ours(pid, state):
            out[name] = pid
        else:
            path.unlink()
    return out


def is_ours(pid: int, state: Path) -> bool:
    """Whether ``pid`` runs and is one we started (on Linux, by the marker in its environment, so that
    a pid reused by an unrelated process after a reboot is never signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours
    environ = Path(f"/proc/{pid}/environ")
    if environ.exists():
        try:
            return f"{MARKER}={state}".encode() in environ.read_bytes().split(b"\0")
        except OSError:
            return False
    return True


def marked_processes(state: Path) -> list[int]:
    """Pids of every process carrying our marker (Linux; elsewhere none): what a worker started too."""
    marker, found = f"{MARKER}={state}".encode(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def stop(state: Path, quiet: bool = False) -> int:
    """End every process ``start`` started: SIGTERM to each process group, then to anything still
    carrying the marker; SIGKILL whatever is left after 15 s."""
    services = alive_services(state)
    for name in reversed(SERVICES):
        if name in services:
            signal_group(services[name], signal.SIGTERM)
    for pid in marked_processes(state):
        signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        marked_processes(state) or any(is_ours(p, state) for p in services.values())
    ):
        time.sleep(0.3)
    leftovers = marked_processes(state)
    for pid in [*services.values(), *leftovers]:
        signal_group(pid, signal.SIGKILL)
        signal_pid(pid, signal.SIGKILL)
    for name in SERVICES:
        pid_file(state, name).unlink(missing_ok=True)
    if not quiet:
        if services:
            print(f"serve: stopped {', '.join(f'{n} (pid {p})' for n, p in services.items())}")
        else:
            print("serve: nothing was running")
    return 0


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group ``pid`` leads (each service leads its own: start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def signal_pid(pid: int, signum: int) -> None:
    """Signal one process, if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def status(state: Path) -> int:
    """Print what runs; exit 0 when all three do, 1 otherwise."""
    services = alive_services(state)
    for name in SERVICES:
        print(f"{name}: {'running, pid ' + str(services[name]) if name in services else 'not running'}")
    return 0 if len(services) == len(SERVICES) else 1


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host``:``port`` can be listened on (as the servers do, with SO_REUSEADDR: connections
    a stopped server left in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_up(state: Path, name: str, url: str, timeout: float) -> None:
    """Poll ``url`` until it answers; a ServeError naming the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    log = state / "logs" / f"{name}.log"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        if name not in alive_services(state):
            raise ServeError(f"the {name} exited while starting; see {log}")
        time.sleep(0.5)
    raise ServeError(f"the {name} did not answer at {url} within {timeout:.0f} s; see {log}")


def run_quiet(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run ``command`` to completion in the checkout, its output appended to ``log``; its exit status."""
    with log.open("ab") as out:
        return subprocess.run(
            [str(BIN / command[0]), *command[1:]], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode


def check(returncode: int, what: str, log: Path) -> None:
    """A ServeError naming ``log`` unless ``returncode`` is 0."""
    if returncode != 0:
        raise ServeError(f"{what} (exit {returncode}); see {log}")


if __name__ == "__main__":
    sys.exit(main())

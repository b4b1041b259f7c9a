"""The team setup on one machine (``make team``, ``make team-stop``, ``make team-user NAME=...``).

``start``, in this order, each on 127.0.0.1 (``--host`` for another address) and each logging to
``<state>/logs/<name>.log``:

1. **postgres**: a PostgreSQL 15 cluster in ``<state>/postgres`` (``initdb`` on first use; run as the
   unprivileged ``postgres`` user through ``runuser`` when this runs as root, since PostgreSQL refuses
   root), with a role and a database each for MLflow (``mlflow``, its users in ``mlflow_auth``) and
   Prefect (``prefect``); password authentication (scram) over TCP, the passwords in a ``pgpass`` file;
2. **s3**: an S3-compatible store (moto's server) with the bucket ``digitflow-artifacts``;
3. **mlflow-server**: the tracking server on PostgreSQL with its basic-auth app (default permission
   ``NO_PERMISSIONS``: a user sees what they are granted), serving the artifacts it keeps in the bucket
   (``--serve-artifacts``: clients need no bucket credentials); the experiments and registered models
   the flows log to are created by the admin and granted to the ``worker`` user;
4. **prefect-server**: the Prefect server on PostgreSQL (asyncpg), with an API auth string;
5. the work pool ``digitflow``, ``prefect deploy`` of prefect.yaml, and **worker-1**, **worker-2**: two
   process workers (one flow run at a time each) whose flow runs log to MLflow as ``worker``.

Secrets never go on a command line, into a log or into the repository: they live in ``--secrets``
(default ``$DIGITFLOW_TEAM_SECRETS``, else ``~/.config/digitflow/team``; mode 700, files 600):
``team.env`` (every password and key, generated on first start unless the environment gives them:
``MLFLOW_AUTH_ADMIN_PASSWORD``, ``PREFECT_SERVER_API_AUTH_STRING``), ``pgpass``, ``basic_auth.ini``, and
one credentials file per user (``admin.env``, ``worker.env``, ``users/<name>.env``), which a user points
``DIGITFLOW_CREDENTIALS`` at. The servers get theirs through their environment.

``stop``: ends every process ``start`` started, PostgreSQL last (a fast shutdown), and any process still
carrying the marker in its environment (flow runs included). ``status``: what runs. ``user NAME``: a
MLflow user (granted EDIT on the flows' experiments and registered models) and their credentials file.

Idempotent: a second ``start`` while everything runs says so; one that finds only part of it running
stops that part and starts everything again; data (PostgreSQL's cluster) survives a stop. Errors are
one line naming the server and its log. The S3 store is moto's, in memory: its artifacts last until
``stop``, which is why the runs' records (PostgreSQL) outlive them; a team points the same settings at
MinIO or S3 (docs/operations.md).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import serve  # scripts/ is on the path (run as a script, or by pytest's pythonpath)
from serve import BIN, MARKER, POOL, ROOT, ServeError, check, is_ours, marked_processes, port_free, run_quiet

PG_BIN = Path(os.environ.get("DIGITFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # the unprivileged user the cluster runs as when this runs as root
BUCKET = "digitflow-artifacts"
ADMIN = "admin"
WORKER_USER = "worker"
EXPERIMENTS = ("digitflow", "digitflow-gan")  # what the flows log to (sweeps: digitflow, as runs)
MODELS = ("digitflow-lenet", "digitflow-minivgg", "digitflow-gan-generator")  # the built-in models' registered names
SERVICES = ("postgres", "s3", "mlflow-server", "prefect-server", "worker-1", "worker-2")  # start order
WORKERS = ("worker-1", "worker-2")
ZOMBIE_AUTOMATION = "digitflow: crash zombie flow runs"
HEARTBEAT_S = 30  # Prefect's smallest heartbeat period
ZOMBIE_AFTER_S = 90  # three heartbeats missed
PORTS = (  # service, option, environment variable, default
    ("postgres", "pg_port", "PG_PORT", 5433),
    ("s3", "s3_port", "S3_PORT", 9000),
    ("mlflow-server", "mlflow_port", "MLFLOW_PORT", 5000),
    ("prefect-server", "prefect_port", "PREFECT_PORT", 4200),
)
SECRET_KEYS = (  # generated once unless the environment gives them
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "PREFECT_SERVER_API_AUTH_STRING",
    "MLFLOW_DB_PASSWORD",
    "PREFECT_DB_PASSWORD",
    "WORKER_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY",
)


def main(argv: list[str] | None = None) -> int:
    """``team.py {start,stop,status,user NAME}``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="scripts/team.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status", "user"])
    parser.add_argument("name", nargs="?", help="user: the new user's name")
    parser.add_argument("--state-dir", default=str(ROOT / ".team"), help="the cluster, logs and pid files")
    parser.add_argument("--secrets", default=default_secrets(), help="passwords and credentials files")
    parser.add_argument("--host", default="127.0.0.1", help="the address every server listens on")
    for _, dest, variable, default in PORTS:
        parser.add_argument(
            f"--{dest.replace('_', '-')}", dest=dest, type=int, default=int(os.environ.get(variable) or default)
        )
    parser.add_argument("--deploy", action="append", metavar="NAME", help="deploy only these (default all)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each server")
    args = parser.parse_intermixed_args(argv)
    team = Team(args)
    try:
        if args.action == "start":
            return team.start(args.deploy, args.timeout)
        if args.action == "stop":
            return team.stop()
        if args.action == "user":
            if not args.name:
                raise ServeError("give the user's name: make team-user NAME=alice")
            return team.add_user(args.name)
        return team.status()
    except ServeError as exc:
        print(f"team: error: {exc}", file=sys.stderr)
        return 2


def default_secrets() -> str:
    """``$DIGITFLOW_TEAM_SECRETS``, else ``$XDG_CONFIG_HOME/digitflow/team`` (``~/.config/...``)."""
    if os.environ.get("DIGITFLOW_TEAM_SECRETS"):
        return os.environ["DIGITFLOW_TEAM_SECRETS"]
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return str(Path(config) / "digitflow" / "team")


@contextlib.contextmanager
def scratch_team(prefix: str, data_dir: str, deploy: list[str], timeout: float = 300) -> Iterator[tuple[Team, Path]]:
    """A whole team setup for a script (scripts/team_faults.py, scripts/team_load.py): started on free loopback
    ports in a new temporary folder, with ``deploy``'s deployments; stopped and the folder removed on the way
    out. Yields the setup and its folder; the workers poll for flow runs every second."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the postgres user reaches its cluster in there
    os.environ.update(
        DIGITFLOW_DATA_DIR=str(Path(data_dir).resolve()),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    ports = {f"{name}_port": free_port() for name in ("pg", "s3", "mlflow", "prefect")}
    setup = Team(argparse.Namespace(state_dir=root / "state", secrets=root / "secrets", host="127.0.0.1", **ports))
    try:
        setup.start(deploy, timeout)
        yield setup, root
    finally:
        setup.stop()
        shutil.rmtree(root, ignore_errors=True)  # the cluster, the logs, the runs' outputs


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Team:
    """The folders, ports and secrets of one team setup, and what starts and stops it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.state = Path(args.state_dir).resolve()
        self.secrets = Path(args.secrets).expanduser().resolve()
        self.host = args.host
        self.ports = {service: int(getattr(args, dest)) for service, dest, _, _ in PORTS}
        self.logs = self.state / "logs"
        self.pg_data = self.state / "postgres" / "data"
        self.pg_socket = self.state / "postgres" / "socket"
        self.mlflow_url = f"http://{self.host}:{self.ports['mlflow-server']}"
        self.prefect_api = f"http://{self.host}:{self.ports['prefect-server']}/api"
        self.s3_url = f"http://{self.host}:{self.ports['s3']}"

    # -- start ---------------------------------------------------------------------------------------
    def start(self, deploy: list[str] | None, timeout: float) -> int:
        """Start everything (see the module docstring); prints the URLs and how to use them."""
        started = time.monotonic()
        running = self.alive()
        if len(running) == len(SERVICES):
            print(f"team: already running ({', '.join(running)}); `make team-stop` ends it (logs in {self.logs})")
            return 0
        if running:  # part of it: a server that died; start the whole again on the same data
            print(f"team: only {', '.join(running)} running; restarting all of it", file=sys.stderr)
            self.stop(quiet=True)
        self.check_before_start()
        self.logs.mkdir(parents=True, exist_ok=True)
        values = self.load_secrets()
        try:
            self.start_postgres(values, timeout)
            self.start_s3(values, timeout)
            self.start_mlflow(values)  # the two servers start side by side: 15-20 s each on 2 cores
            self.start_prefect(values)
            self.wait_until_up("mlflow-server", f"{self.mlflow_url}/health", timeout)
            self.wait_until_up("prefect-server", f"{self.prefect_api}/health", timeout)
            self.setup_mlflow(values)
            self.setup_prefect(values, deploy)
            for name in WORKERS:
                self.start_worker(name, values)
            time.sleep(2)
            dead = [name for name in WORKERS if name not in self.alive()]
            if dead:
                raise ServeError(f"{dead[0]} exited at once; see {self.logs / (dead[0] + '.log')}")
        except BaseException:
            self.stop(quiet=True)
            raise
        took = time.monotonic() - started
        print(
            "\n".join(
                [
                    f"digitflow team setup running (started in {took:.0f} s):",
                    f"  MLflow:     {self.mlflow_url}/#/experiments?workflowType=machine_learning  (basic auth)",
                    f"  Prefect UI: http://{self.host}:{self.ports['prefect-server']}  (asks for the auth string)",
                    f"  PostgreSQL: {self.host}:{self.ports['postgres']} (data {self.pg_data})",
                    f"  S3 (moto, in memory): {self.s3_url}, bucket {BUCKET}",
                    f"  workers: {', '.join(WORKERS)} on pool {POOL}, logging to MLflow as user {WORKER_USER}",
                    f"  logs: {self.logs}/",
                    f"  credentials (never printed): {self.secrets}/admin.env",
                    "  a user per person: make team-user NAME=alice",
                    "use it from a shell:",
                    f"  export DIGITFLOW_CREDENTIALS={self.secrets}/admin.env",
                    "  digitflow run --train 'mnist:test[:2000]' --epochs 1 --offline",
                    "  digitflow compare",
                    "stop it: make team-stop",
                ]
            )
        )
        return 0

    def check_before_start(self) -> None:
        """One-line errors for what would stop a server from starting: binaries, folders, ports."""
        if not (PG_BIN / "postgres").is_file():
            raise ServeError(
                f"PostgreSQL 15 is not installed ({PG_BIN}/postgres is missing): apt-get install postgresql-15"
            )
        if not (BIN / "moto_server").is_file() or not _importable("psycopg2"):
            raise ServeError(f"the team extra is not installed: {BIN}/pip install -c constraints.txt -e '.[team]'")
        if self.secrets == ROOT or ROOT in self.secrets.parents:
            raise ServeError(f"the secrets folder {self.secrets} is inside the repository; give one outside it")
        for service, _, variable, _ in PORTS:
            port = self.ports[service]
            if not port_free(port, self.host):
                raise ServeError(
                    f"port {port} on {self.host} (for {service}) is taken by another process; "
                    f"stop it, or choose another port with {variable}=N"
                )
        data_dir = os.environ.get("DIGITFLOW_DATA_DIR")
        if data_dir and not Path(data_dir).is_dir():
            raise ServeError(
                f"DIGITFLOW_DATA_DIR={data_dir} is not a folder; give the folder that holds the official "
                "files (MNIST/raw, USPS, ...), or leave it unset to use data/ in the checkout"
            )
        if os.geteuid() == 0:
            self.state.mkdir(parents=True, exist_ok=True)
            for folder in [self.state, *self.state.parents]:
                if not folder.stat().st_mode & 0o001:
                    raise ServeError(
                        f"the {PG_USER} user cannot reach {self.state} ({folder} is not searchable by others); "
                        "choose another --state-dir, or chmod o+x the folder"
                    )

    def load_secrets(self) -> dict[str, str]:
        """The passwords and keys: the environment's, else ``team.env``'s, else new; written back
        (mode 600) so the next start and ``team.py user`` find them."""
        self.secrets.mkdir(parents=True, exist_ok=True)
        self.secrets.chmod(0o700)
        path = self.secrets / "team.env"
        values = read_env_file(path) if path.is_file() else {}
        for key in SECRET_KEYS:
            values[key] = os.environ.get(key) or values.get(key) or secrets.token_urlsafe(24)
        values.setdefault("AWS_ACCESS_KEY_ID", "digitflow")
        write_private(path, "# digitflow team setup: every password and key (scripts/team.py)", values)
        return values

    def start_postgres(self, values: dict[str, str], timeout: float) -> None:
        """initdb on first use; start the cluster; its roles, databases and the pgpass file."""
        as_pg = self.as_postgres()
        if not (self.pg_data / "PG_VERSION").is_file():
            if self.pg_data.exists() and any(self.pg_data.iterdir()):
                raise ServeError(f"{self.pg_data} is not empty and is not a PostgreSQL cluster; move it away")
            self.pg_data.mkdir(parents=True, exist_ok=True)
            self.own(self.pg_data.parent, self.pg_data)
            code = run_quiet_abs(
                [*as_pg, str(PG_BIN / "initdb"), "-D", str(self.pg_data), "-U", "postgres", "--auth-local=peer",
                 "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                self.env(), self.logs / "postgres-init.log",
            )  # fmt: skip
            check(code, "initdb failed", self.logs / "postgres-init.log")
        self.pg_socket.mkdir(parents=True, exist_ok=True)
        self.own(self.pg_socket)
        log = self.logs / "postgres.log"
        log.touch()
        self.own(log)
        options = f"-h {self.host} -p {self.ports['postgres']} -k {self.pg_socket}"
        code = run_quiet_abs(
            [*as_pg, str(PG_BIN / "pg_ctl"), "start", "-D", str(self.pg_data), "-l", str(log), "-o", options, "-w",
             "-t", str(int(timeout))],
            self.env(), self.logs / "postgres-ctl.log",
        )  # fmt: skip
        check(code, "the postgres server did not start", log)
        pid = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        serve.pid_file(self.state, "postgres").write_text(json.dumps({"pid": pid, "command": ["postgres"]}))
        sql = "\n".join(
            [
                *(f"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS "
                  f"(SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec" for role in ("mlflow", "prefect")),
                f"ALTER ROLE mlflow PASSWORD '{values['MLFLOW_DB_PASSWORD']}';",
                f"ALTER ROLE prefect PASSWORD '{values['PREFECT_DB_PASSWORD']}';",
                *(f"SELECT 'CREATE DATABASE {db} OWNER {owner}' WHERE NOT EXISTS "
                  f"(SELECT FROM pg_database WHERE datname = '{db}')\\gexec"
                  for db, owner in (("mlflow", "mlflow"), ("mlflow_auth", "mlflow"), ("prefect", "prefect"))),
            ]
        )  # fmt: skip
        # the SQL (with the passwords) goes through standard input, never the command line
        psql = [*as_pg, str(PG_BIN / "psql"), "-h", str(self.pg_socket), "-p", str(self.ports["postgres"]),
                "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]  # fmt: skip
        with (self.logs / "postgres-setup.log").open("ab") as out:
            done = subprocess.run(psql, input=sql.encode(), env=self.env(), stdout=out, stderr=out, check=False)
        check(done.returncode, "could not create the databases", self.logs / "postgres-setup.log")
        port = self.ports["postgres"]
        lines = [f"{self.host}:{port}:{db}:{role}:{values[key]}"
                 for db, role, key in (("mlflow", "mlflow", "MLFLOW_DB_PASSWORD"),
                                       ("mlflow_auth", "mlflow", "MLFLOW_DB_PASSWORD"),
                                       ("prefect", "prefect", "PREFECT_DB_PASSWORD"))]  # fmt: skip
        write_private(self.secrets / "pgpass", None, lines=lines)

    def start_s3(self, values: dict[str, str], timeout: float) -> None:
        """moto's S3 server and the bucket."""
        env = {**self.env(), "AWS_ACCESS_KEY_ID": values["AWS_ACCESS_KEY_ID"]}
        self.launch("s3", ["moto_server", "-H", self.host, "-p", str(self.ports["s3"])], env)
        self.wait_until_up("s3", f"{self.s3_url}/moto-api/", timeout)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        if BUCKET not in [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=BUCKET)

    def start_mlflow(self, values: dict[str, str]) -> None:
        """The tracking server: PostgreSQL, the bucket behind --serve-artifacts, basic auth."""
        pg = f"{self.host}:{self.ports['postgres']}"
        ini = self.secrets / "basic_auth.ini"
        ini_lines = ["[mlflow]", "default_permission = NO_PERMISSIONS",
                     f"database_uri = postgresql+psycopg2://mlflow@{pg}/mlflow_auth", f"admin_username = {ADMIN}",
                     "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                     "auth_cache_ttl_seconds = 60"]  # fmt: skip
        write_private(ini, None, lines=ini_lines)
        env = {
            **self.env(),
            "PGPASSFILE": str(self.secrets / "pgpass"),
            "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://mlflow@{pg}/mlflow",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": values["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": values["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": values["MLFLOW_AUTH_ADMIN_PASSWORD"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": values["MLFLOW_FLASK_SERVER_SECRET_KEY"],
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # eight more processes, for GenAI jobs this has none of
        }
        # one worker process creates the schema before it answers (several would race on a new database)
        command = ["mlflow", "server", "--app-name", "basic-auth", "--serve-artifacts",
                   "--artifacts-destination", f"s3://{BUCKET}", "--host", self.host,
                   "--port", str(self.ports["mlflow-server"]), "--workers", "1"]  # fmt: skip
        self.launch("mlflow-server", command, env)

    def start_prefect(self, values: dict[str, str]) -> None:
        """The Prefect server on PostgreSQL, with its API auth string."""
        env = {
            **self.env(),
            "PREFECT_HOME": str(self.state / "prefect"),
            "PGPASSFILE": str(self.secrets / "pgpass"),
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://prefect@{self.host}:{self.ports['postgres']}/prefect"
            ),
            "PREFECT_SERVER_API_AUTH_STRING": values["PREFECT_SERVER_API_AUTH_STRING"],
        }
        command = ["prefect", "server", "start", "--host", self.host, "--port", str(self.ports["prefect-server"])]
        self.launch("prefect-server", command, env)

    def setup_mlflow(self, values: dict[str, str]) -> None:
        """As admin: the worker user, the flows' experiments and registered models, granted to it;
        the admin's and the worker's credentials files."""
        admin = (ADMIN, values["MLFLOW_AUTH_ADMIN_PASSWORD"])
        self.ensure_user(admin, WORKER_USER, values["WORKER_PASSWORD"])
        self.write_credentials("admin.env", ADMIN, values["MLFLOW_AUTH_ADMIN_PASSWORD"], values)
        self.write_credentials("worker.env", WORKER_USER, values["WORKER_PASSWORD"], values)

    def ensure_user(self, admin: tuple[str, str], name: str, password: str) -> None:
        """Create MLflow user ``name`` (if new) and grant it EDIT on the flows' experiments and models,
        creating those first (as admin, so that no user owns them)."""
        found = self.mlflow_api(admin, "GET", f"/api/2.0/mlflow/users/get?username={name}", ok=(200, 404))
        if found[0] == 404:
            self.mlflow_api(admin, "POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
        for experiment in EXPERIMENTS:
            status, body = self.mlflow_api(
                admin, "GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}", ok=(200, 404)
            )
            if status == 404:
                _, body = self.mlflow_api(admin, "POST", "/api/2.0/mlflow/experiments/create", {"name": experiment})
                experiment_id = body["experiment_id"]
            else:
                experiment_id = body["experiment"]["experiment_id"]
            self.grant(admin, name, "experiment", experiment_id)
        for model in MODELS:
            status, _ = self.mlflow_api(
                admin, "GET", f"/api/2.0/mlflow/registered-models/get?name={model}", ok=(200, 404)
            )
            if status == 404:
                self.mlflow_api(admin, "POST", "/api/2.0/mlflow/registered-models/create", {"name": model})
            self.grant(admin, name, "registered_model", model)

    def grant(self, admin: tuple[str, str], user: str, kind: str, resource: str) -> None:
        """Give ``user`` EDIT on one experiment or registered model."""
        query = f"username={user}&resource_type={kind}&resource_id={urllib.parse.quote(resource)}"
        _, held = self.mlflow_api(admin, "GET", f"/api/3.0/mlflow/users/permissions/get?{query}")
        if held.get("permission") in ("EDIT", "MANAGE"):  # granted by an earlier start
            return
        body = {"username": user, "resource_type": kind, "resource_id": resource, "permission": "EDIT"}
        self.mlflow_api(admin, "POST", "/api/3.0/mlflow/users/permissions/grant", body)

    def mlflow_api(
        self, user: tuple[str, str], method: str, path: str, body: dict | None = None, ok: tuple[int, ...] = (200,)
    ) -> tuple[int, dict]:
        """One request to the tracking server as ``user``; a ServeError naming its log otherwise."""
        request = urllib.request.Request(
            self.mlflow_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": basic(*user), "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return exc.code, {}
            raise ServeError(
                f"the mlflow-server answered {exc.code} to {method} {path.split('?')[0]}; "
                f"see {self.logs / 'mlflow-server.log'}"
            ) from None

    def write_credentials(self, file: str, user: str, password: str, values: dict[str, str]) -> Path:
        """A user's credentials file (mode 600): what ``DIGITFLOW_CREDENTIALS`` points at."""
        path = self.secrets / file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        credentials = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": values["PREFECT_SERVER_API_AUTH_STRING"],
        }
        write_private(path, f"# digitflow team credentials of {user}: export DIGITFLOW_CREDENTIALS={path}", credentials)
        return path

    def setup_prefect(self, values: dict[str, str], deploy: list[str] | None) -> None:
        """The work pool (if new) and the deployments of prefect.yaml."""
        env = self.client_env(values)
        setup_log = self.logs / "setup.log"
        if run_quiet(["prefect", "work-pool", "inspect", POOL], env, setup_log) != 0:
            created = run_quiet(["prefect", "work-pool", "create", POOL, "--type", "process"], env, setup_log)
            check(created, f"could not create the work pool {POOL}", setup_log)
        self.ensure_zombie_automation(values)
        selection = [arg for name in deploy for arg in ("--name", name)] if deploy else ["--all"]
        deployed = run_quiet(["prefect", "--no-prompt", "deploy", *selection], env, self.logs / "deploy.log")
        check(deployed, "prefect deploy failed", self.logs / "deploy.log")

    def ensure_zombie_automation(self, values: dict[str, str]) -> None:
        """Prefect's automation for flow runs that stop reporting (a worker's machine lost, a kill -9):
        the workers' flow runs send a heartbeat every HEARTBEAT_S seconds; one silent for ZOMBIE_AFTER_S
        is marked Crashed (Prefect Cloud has it built in; a self-hosted server needs it created)."""
        auth = {"Authorization": basic_token(values["PREFECT_SERVER_API_AUTH_STRING"])}
        found = http_json(f"{self.prefect_api}/automations/filter", {}, auth, self.logs / "prefect-server.log")
        if any(automation.get("name") == ZOMBIE_AUTOMATION for automation in found):
            return
        events = [
            "prefect.flow-run.heartbeat",
            *(f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")),
        ]
        automation = {
            "name": ZOMBIE_AUTOMATION,
            "description": f"a flow run silent for {ZOMBIE_AFTER_S} s is marked Crashed (scripts/team.py)",
            "enabled": True,
            "trigger": {
                "type": "event",
                "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                "after": ["prefect.flow-run.heartbeat"],
                "expect": events,
                "for_each": ["prefect.resource.id"],
                "posture": "Proactive",
                "threshold": 1,
                "within": ZOMBIE_AFTER_S,
            },
            "actions": [
                {"type": "change-flow-run-state", "state": "CRASHED", "message": "no heartbeat: its process was lost"}
            ],
        }
        http_json(f"{self.prefect_api}/automations/", automation, auth, self.logs / "prefect-server.log")

    def client_env(self, values: dict[str, str]) -> dict[str, str]:
        """A Prefect client's environment: the API and its auth string."""
        env = {**self.env(), "PREFECT_API_URL": self.prefect_api}
        env["PREFECT_API_AUTH_STRING"] = values["PREFECT_SERVER_API_AUTH_STRING"]
        env["PREFECT_HOME"] = str(self.state / "prefect-client")
        return env

    def start_worker(self, name: str, values: dict[str, str]) -> None:
        """A process worker that runs one flow run at a time, logging to MLflow as the worker user."""
        env = {
            **self.client_env(values),
            "PREFECT_HOME": str(self.state / name),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": WORKER_USER,
            "MLFLOW_TRACKING_PASSWORD": values["WORKER_PASSWORD"],
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # for the zombie automation
        }
        if env.get("DIGITFLOW_DATA_DIR"):  # the flow runs move into the checkout: an absolute folder
            env["DIGITFLOW_DATA_DIR"] = str(Path(env["DIGITFLOW_DATA_DIR"]).resolve())
        self.launch(name, ["prefect", "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"], env)

    # -- users ---------------------------------------------------------------------------------------
    def add_user(self, name: str) -> int:
        """A MLflow user ``name`` with a new password, granted EDIT on the flows' experiments and
        registered models; their credentials file (the password is never printed)."""
        if not name.replace("-", "").replace("_", "").isalnum() or name in (ADMIN, WORKER_USER):
            raise ServeError(f"{name!r} cannot be a user's name: letters, digits, - and _, not admin or worker")
        if "mlflow-server" not in self.alive():
            raise ServeError("the team setup is not running: make team")
        values = read_env_file(self.secrets / "team.env")
        path = self.secrets / "users" / f"{name}.env"
        old = read_env_file(path) if path.is_file() else {}
        password = old.get("MLFLOW_TRACKING_PASSWORD") or secrets.token_urlsafe(18)
        self.ensure_user((ADMIN, values["MLFLOW_AUTH_ADMIN_PASSWORD"]), name, password)
        self.write_credentials(f"users/{name}.env", name, password, values)
        print(f"team: user {name} can run, compare and promote; hand them {path} (export DIGITFLOW_CREDENTIALS=...)")
        return 0

    # -- processes -----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment every process gets: the marker ``stop`` finds them by, no analytics."""
        env = {**os.environ, MARKER: str(self.state), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI", "DIGITFLOW_CREDENTIALS",
                    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", *SECRET_KEYS):  # fmt: skip
            env.pop(key, None)  # each process gets only the secrets it needs, set where it starts
        return env

    def as_postgres(self) -> list[str]:
        """The prefix that runs a PostgreSQL program as its user (nothing unless this runs as root)."""
        return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []

    def own(self, *paths: Path) -> None:
        """Hand ``paths`` to the PostgreSQL user (as root), mode 700 for folders."""
        for path in paths:
            if path.is_dir():
                path.chmod(0o700)
            if os.geteuid() == 0:
                entry = pwd.getpwnam(PG_USER)
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def launch(self, name: str, command: list[str], env: dict[str, str]) -> None:
        """Start ``command`` in a session of its own (serve.py's launch), its log in logs/<name>.log."""
        serve.launch(self.state, name, command, env)

    def wait_until_up(self, name: str, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers; a one-line ServeError naming the server and its log."""
        deadline = time.monotonic() + timeout
        log = self.logs / f"{name}.log"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except OSError:
                pass
            if name not in self.alive():
                raise ServeError(f"the {name} exited while starting; see {log}")
            time.sleep(0.5)
        raise ServeError(f"the {name} did not answer at {url} within {timeout:.0f} s; see {log}")

    def alive(self) -> dict[str, int]:
        """Service -> pid of those whose pid file names a live process of ours (stale files removed)."""
        out = {}
        for name in SERVICES:
            path = serve.pid_file(self.state, name)
            if not path.is_file():
                continue
            pid = int(json.loads(path.read_text())["pid"])
            if is_ours(pid, self.state):
                out[name] = pid
            else:
                path.unlink()
        return out

    def stop(self, quiet: bool = False) -> int:
        """End every process ``start`` started: workers, servers and their flow runs by SIGTERM, then
        PostgreSQL (``pg_ctl stop -m fast``), then SIGKILL for anything still marked after 15 s."""
        services = self.alive()
        for name in reversed(SERVICES[1:]):
            if name in services:
                serve.signal_group(services[name], signal.SIGTERM)
        postgres = self.postgres_pids()
        for pid in marked_processes(self.state):
            if pid not in postgres:
                serve.signal_pid(pid, signal.SIGTERM)
        self.wait_gone(lambda: [p for p in marked_processes(self.state) if p not in self.postgres_pids()], 15)
        if (self.pg_data / "postmaster.pid").is_file():
            run_quiet_abs(
                [*self.as_postgres(), str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.pg_data), "-m", "fast", "-w"],
                self.env(),
                self.logs / "postgres-ctl.log",
            )
        self.wait_gone(lambda: marked_processes(self.state), 15)
        for pid in marked_processes(self.state):
            serve.signal_pid(pid, signal.SIGKILL)
        for name in SERVICES:
            serve.pid_file(self.state, name).unlink(missing_ok=True)
        if not quiet:
            if services:
                print(f"team: stopped {', '.join(f'{n} (pid {p})' for n, p in services.items())}")
            else:
                print("team: nothing was running")
        return 0

    def postgres_pids(self) -> set[int]:
        """The cluster's processes (the postmaster and its children), by their command line."""
        return {pid for pid in marked_processes(self.state) if _command(pid).startswith("postgres")}

    @staticmethod
    def wait_gone(pids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pids():
            time.sleep(0.3)

    def status(self) -> int:
        """Print what runs; exit 0 when all of it does, 1 otherwise."""
        running = self.alive()
        for name in SERVICES:
            print(f"{name}: {'running, pid ' + str(running[name]) if name in running else 'not running'}")
        return 0 if len(running) == len(SERVICES) else 1


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def basic_token(token: str) -> str:
    """Prefect's Authorization header for an API auth string."""
    return "Basic " + base64.b64encode(token.encode()).decode()


def http_json(url: str, body: object, headers: dict[str, str], log: Path) -> Any:
    """POST ``body`` as JSON, the answer's JSON; a ServeError naming ``log`` on an error status."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={**headers, "Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise ServeError(f"{url} answered {exc.code}; see {log}") from None


def basic(user: str, password: str) -> str:
    """An HTTP basic Authorization header."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def write_private(path: Path, header: str | None, values: dict[str, str] | None = None, lines=None) -> None:
    """Write a file only its owner can read (created 600, so no other user ever sees it readable)."""
    text = [header] if header else []
    text += [f"{k}={v}" for k, v in (values or {}).items()] + list(lines or [])
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(text) + "\n")


def run_quiet_abs(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run ``command`` (a full path or a system program) to completion, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


if __name__ == "__main__":
    if not shutil.which("runuser") and os.geteuid() == 0:
        print("team: error: runuser is missing (util-linux)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())

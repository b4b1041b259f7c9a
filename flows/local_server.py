"""One local Prefect server for every ``digitflow`` command on a Prefect home, kept while it is used.

Without ``PREFECT_API_URL``, Prefect 3.9 starts a temporary API server in every process that runs a
flow and stops it when that process exits: 6-8 s of every ``digitflow run`` on a 2-core machine (15 s
on a new Prefect home), most of a short run's own time. Runs started together raced in that server's
database migration, and one run could end up talking to the temporary server another run had started,
and lose it when that run stopped it (the run-cost issue). So a ``digitflow`` command that finds no
configured server uses this one instead:

- the first command on a Prefect home starts it, detached (a session of its own: a terminal's Ctrl-C
  does not reach it), on a free loopback port, with the same uvicorn command Prefect's temporary server
  uses (``prefect.server.api.server:create_app``, UI and scheduling services off);
- later commands, and commands started at the same moment, find it (``server.json``, under a file
  lock) and wait until it answers ``/api/health``;
- each command holds a lease (a file named by its pid) while it runs; the server stops by itself
  once no live command has held one for ``DIGITFLOW_PREFECT_SERVER_IDLE`` seconds (600 by default; 0:
  as soon as the last command ends). A command killed with ``kill -9`` leaves a lease whose pid is
  dead, which counts as released.

Files, in ``$PREFECT_HOME/digitflow-server/``: ``lock`` (flock), ``server.json`` (the keeper's pid,
port, url), ``leases/<pid>``, ``server.log`` (the server's output: a start that failed says why there).

Switched off where it does not apply: when Prefect is configured with a server (``PREFECT_API_URL``
in the environment, a profile, ``.env`` or ``prefect.toml``), that server is used and nothing starts.
``python -m flows.local_server stop`` stops the server of the current Prefect home at once.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from digitflow.errors import DigitflowError

IDLE_ENV = "DIGITFLOW_PREFECT_SERVER_IDLE"
DEFAULT_IDLE_S = 600.0
START_TIMEOUT_S = 180.0  # a cold start (new database, migrations) takes 15-40 s on a busy 2-core machine
POLL_S = 1.0  # how often the keeper looks at the leases


class ServerError(DigitflowError):
    """The local Prefect server did not come up (the message names its log)."""


@dataclass(frozen=True)
class LocalServer:
    """A running (or starting) local server: its keeper's pid, its API url and its folder."""

    pid: int
    url: str
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Return once ``/api/health`` answers; a one-line :class:`ServerError` if the server died or
        did not answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if _healthy(self.url):
                return
            if not _alive(self.pid):
                raise ServerError(f"the local Prefect server did not start: {_last_line(self.log)} (log: {self.log})")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the local Prefect server at {self.url} did not answer within {timeout:.0f} s (log: {self.log})"
                )
            time.sleep(0.1)


def prefect_home() -> Path:
    """``$PREFECT_HOME``, else Prefect's default ``~/.prefect``."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def configured_api_url() -> str | None:
    """The server Prefect is configured with, from any of its settings sources; None if none is."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL  # profiles, .env, prefect.toml: as Prefect reads them

    return PREFECT_API_URL.value() or None


def use_local_server() -> LocalServer | None:
    """Point this process (and the processes it starts) at the local server of this Prefect home,
    starting it if none runs; None, doing nothing, when Prefect is configured with a server.

    Returns at once: call :meth:`LocalServer.wait_ready` before the first flow run (the server's start
    overlaps whatever the caller imports meanwhile). This process holds a lease until it exits.
    """
    idle_seconds()  # a malformed setting: one line here, not a keeper that dies
    if configured_api_url():
        return None
    server = find_or_start(prefect_home() / "digitflow-server", lease=os.getpid())
    atexit.register(release, server.folder, os.getpid())
    os.environ["PREFECT_API_URL"] = server.url + "/api"
    # It serves the API only (no UI: Prefect's ephemeral mode): no "View at <dead link>" line in the log.
    os.environ.setdefault("PREFECT_UI_URL", "")
    if "prefect.context" in sys.modules:  # Prefect read its settings at import: make it read them again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return server


def find_or_start(folder: Path, lease: int | None = None) -> LocalServer:
    """The server that keeps ``folder``: the running one, or a new one started now (not yet ready).
    ``lease``: a pid that holds a lease from now on (taken under the same lock, so the server cannot
    stop between being found and being leased)."""
    (folder / "leases").mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        server = _running(folder)
        if server is None:
            server = _start(folder)
        if lease is not None:
            (folder / "leases" / str(lease)).write_text("")
    return server


def release(folder: Path, pid: int) -> None:
    """Give up ``pid``'s lease (the server stops once no lease is left for its idle time)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / "leases" / str(pid)).unlink()


def stop(folder: Path) -> bool:
    """Stop the server that keeps ``folder`` now, leases or not; whether one was running."""
    with _locked(folder):
        server = _running(folder)
    if server is None:
        return False
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _running(folder: Path) -> LocalServer | None:
    try:
        info = json.loads((folder / "server.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    server = LocalServer(int(info["pid"]), str(info["url"]), folder)
    return server if _alive(server.pid) and _is_keeper(server.pid) else None


def _is_keeper(pid: int) -> bool:
    """Whether ``pid`` runs this module's keeper, not a process that got a dead keeper's pid (server.json
    outlives a reboot in ``~/.prefect``); True where /proc cannot say."""
    try:
        return b"flows.local_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()


def _start(folder: Path) -> LocalServer:
    """Start the keeper (which starts uvicorn) detached; record it in server.json."""
    port = _free_port()
    with (folder / "server.log").open("wb") as log:  # this start's output only
        launcher = subprocess.Popen(
            [sys.executable, "-m", "flows.local_server", "keep", str(folder), str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(_import_paths())},
        )
        launcher.wait()  # it forks the keeper and exits at once: the keeper is nobody's child
    pid = int((folder / "keeper.pid").read_text())
    server = LocalServer(pid, f"http://127.0.0.1:{port}", folder)
    (folder / "server.json").write_text(json.dumps({"pid": pid, "port": port, "url": server.url}))
    return server


def _import_paths() -> list[str]:
    """Where ``flows`` and ``digitflow`` were imported from, for the keeper (a new interpreter)."""
    here = Path(__file__).resolve().parents[1]
    import digitflow

    return [str(here), str(Path(digitflow.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    import urllib.request  # here, not at the top: `digitflow --help` imports this module

    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _last_line(log: Path) -> str:
    """The log's last exception line (``sqlite3.OperationalError: unable to open ...``), else its last line."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
        if errors or lines:
            return (errors or lines)[-1][:300]
    return "it exited without a word"


def idle_seconds() -> float:
    """``$DIGITFLOW_PREFECT_SERVER_IDLE`` (seconds without a lease before the server stops), else 600."""
    text = os.environ.get(IDLE_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_IDLE_S
    except ValueError:
        raise ServerError(f"{IDLE_ENV} must be a number of seconds, got {text!r}") from None


# --- the keeper: `python -m flows.local_server keep FOLDER PORT` (started by _start) ---------------


def keep(folder: Path, port: int) -> int:
    """Run uvicorn with Prefect's API on ``port`` until no lease has been held for the idle time."""
    idle = idle_seconds()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    last_used = time.monotonic()
    try:
        while not stopping and server.poll() is None:
            with _locked(folder):
                if _live_leases(folder):
                    last_used = time.monotonic()
                elif time.monotonic() - last_used >= idle:
                    _forget(folder)  # under the lock: nobody finds a server that is stopping
                    break
            time.sleep(POLL_S if idle >= POLL_S else 0.2)
    finally:
        with _locked(folder):
            _forget(folder)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


def _live_leases(folder: Path) -> list[int]:
    """The pids that hold a lease and still run; the leases of dead ones are removed."""
    live = []
    for lease in (folder / "leases").glob("*"):
        pid = int(lease.name) if lease.name.isdigit() else -1
        if pid > 0 and _alive(pid):
            live.append(pid)
        else:
            with contextlib.suppress(FileNotFoundError):
                lease.unlink()
    return live


def _forget(folder: Path) -> None:
    """Remove server.json if it names this keeper."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        if json.loads((folder / "server.json").read_text()).get("pid") == os.getpid():
            (folder / "server.json").unlink()


def _die_with_parent() -> None:
    """In uvicorn's child (Linux): SIGTERM when the keeper dies, even by ``kill -9``."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    if argv[:1] == ["keep"] and len(argv) == 3:
        folder = Path(argv[1])
        child = os.fork()
        if child > 0:  # the launcher: says who keeps the server and exits, so that init adopts the keeper
            (folder / "keeper.pid").write_text(str(child))
            return 0
        return keep(folder, int(argv[2]))
    if argv == ["stop"]:
        print("stopped" if stop(prefect_home() / "digitflow-server") else "no local server was running")
        return 0
    print("usage: python -m flows.local_server stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

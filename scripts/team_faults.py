"""The team setup's faults, each made to happen and reported: what was lost and the command that recovers.

``python scripts/team_faults.py --data-dir ../shared/data [--fault postgres s3 worker]`` starts its own team
setup (scripts/team.py) on free loopback ports in a temporary folder, runs an undisturbed baseline run, then:

- ``postgres``: PostgreSQL restarted (``pg_ctl restart -m fast``) during a training run's epoch 2;
- ``s3``: the S3 store killed (SIGKILL) when training ends, so the model and the run's files are logged while
  it is down; then started again and ``digitflow replay`` run on what the run kept;
- ``worker``: a nightly deployment run's worker and its flow-run process killed (SIGKILL) in epoch 2; Prefect's
  zombie automation marks it Crashed; ``digitflow run --resume`` then continues from its last checkpoint.

Each reports the run's exit, its figures against the baseline's, what MLflow holds, and the recovery command,
then everything is stopped. Minutes on 2 cores: a run of 2,000 images for 4 epochs per fault, plus the
baseline and the zombie automation's 90 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import team as team_setup
from serve import ROOT

RUN = ["--train", "mnist:test[:2000]", "--test", "mnist:test[9000:]", "--target", "usps:test[:500]",
       "--epochs", "4", "--attack", "none", "--offline", "--seed", "7"]  # fmt: skip
PARAMETERS = dict(
    train="mnist:test[:2000]",
    test="mnist:test[9000:]",
    target=["usps:test[:500]"],
    epochs=4,
    attack=["none"],
    offline=True,
    seed=7,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/team_faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR") or str(ROOT.parent / "shared/data"))
    parser.add_argument(
        "--fault", nargs="+", choices=["postgres", "s3", "worker"], default=["postgres", "s3", "worker"]
    )
    args = parser.parse_args(argv)
    with team_setup.scratch_team("digitflow-faults-", args.data_dir, ["mnist-nightly"]) as (setup, root):
        faults = Faults(setup, root)
        faults.baseline()
        for fault in args.fault:
            getattr(faults, fault)()
    return 0


class Faults:
    """Runs against one team setup, and what each fault did to them."""

    def __init__(self, setup: team_setup.Team, root: Path) -> None:
        self.setup = setup
        self.root = root
        self.values = team_setup.read_env_file(setup.secrets / "team.env")
        self.env = {
            **os.environ,
            "DIGITFLOW_CREDENTIALS": str(setup.secrets / "admin.env"),
            "PREFECT_HOME": str(root / "client-prefect"),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # give up on a lost server in seconds, not minutes
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.env.pop(team_setup.MARKER, None)
        self.figures: dict[str, str] = {}
        self.runs: dict[str, str] = {}

    def command(self, *args: str, output: str) -> list[str]:
        return [sys.executable, "-m", "flows", *args, *RUN, "--cache-dir", str(self.root / "cache"),
                "--output-dir", str(self.root / output)]  # fmt: skip

    def run(
        self, command: list[str], when: str | None = None, then: Callable[[], None] | None = None
    ) -> tuple[int, str]:
        """Run a digitflow command; call ``then()`` once a line of its output contains ``when``."""
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if when is not None and when in line and then is not None:
                then()
                then = None
        return process.wait(), "".join(lines)

    @staticmethod
    def accuracy(output: str) -> str:
        found = re.findall(r"test accuracy: ([0-9.]+)", output)
        return found[-1] if found else "none"

    def report(self, fault: str, lines: list[str]) -> None:
        print(f"\n=== fault: {fault}")
        print("\n".join(f"  {line}" for line in lines), flush=True)

    def baseline(self) -> None:
        code, output = self.run(self.command("run", output="baseline"))
        self.figures["baseline"] = self.accuracy(output)
        self.runs["baseline"] = re.findall(r"MLflow run: ([0-9a-f]{32})", output)[-1]
        self.report("none (the baseline)", [f"exit {code}, test accuracy {self.figures['baseline']}"])

    def postgres(self) -> None:
        def restart() -> None:
            started = time.monotonic()
            team_setup.run_quiet_abs(
                [*self.setup.as_postgres(), str(team_setup.PG_BIN / "pg_ctl"), "restart", "-D", str(self.setup.pg_data),
                 "-m", "fast", "-w"],
                self.setup.env(), self.setup.logs / "postgres-ctl.log",
            )  # fmt: skip
            print(f"  (PostgreSQL restarted in {time.monotonic() - started:.1f} s)", flush=True)

        code, output = self.run(self.command("run", output="postgres"), when="epoch 1/4", then=restart)
        lines = [f"exit {code}, test accuracy {self.accuracy(output)} (baseline {self.figures['baseline']})"]
        lines += self.mlflow_epochs(output)
        if code != 0:
            lines.append("the run stopped: " + last_error(output))
            resumed, again = self.run(self.command("run", "--resume", output="postgres"))
            lines.append(f"recovery `digitflow run ... --resume`: exit {resumed}, test accuracy {self.accuracy(again)}")
        self.report("PostgreSQL restarted during training", lines)

    def s3(self) -> None:
        def kill_s3() -> None:
            pid = self.setup.alive().get("s3")
            if pid:
                os.killpg(pid, signal.SIGKILL)
                print(f"  (S3 store killed, pid {pid})", flush=True)

        code, output = self.run(self.command("run", output="s3"), when="epoch 4/4", then=kill_s3)
        lines = [f"exit {code}: {last_error(output) if code else 'completed'}"]
        self.setup.start_s3(self.values, 120)  # moto again: an empty bucket (it kept its objects in memory)
        kept = self.root / "s3" / "unlogged"
        if kept.is_dir():
            replay_code, replayed = self.run([sys.executable, "-m", "flows", "replay", str(kept)])
            logged = [line.strip() for line in replayed.splitlines() if " logged to " in line]
            lines.append(f"recovery `digitflow replay {kept}`: exit {replay_code}: {'; '.join(logged)}")
        lines += self.mlflow_epochs(output, re.findall(r"what run ([0-9a-f]{32})", output))
        code, again = self.run(self.command("run", "--resume", output="s3"))
        lines.append(f"then `digitflow run ... --resume`: exit {code}, test accuracy {self.accuracy(again)} "
                     f"(baseline {self.figures['baseline']})")  # fmt: skip
        lines += self.mlflow_epochs(again)
        self.report("S3 store down while the model is logged", lines)

    def worker(self) -> None:
        import requests

        api, auth = (
            self.setup.prefect_api,
            {"Authorization": team_setup.basic_token(self.values["PREFECT_SERVER_API_AUTH_STRING"])},
        )
        deployment = requests.get(
            f"{api}/deployments/name/digitflow-pipeline/mnist-nightly", headers=auth, timeout=30
        ).json()
        parameters: dict[str, Any] = {
            **PARAMETERS,
            "cache_dir": str(self.root / "cache"),
            "output_dir": str(self.root / "worker"),
        }
        flow_run = requests.post(
            f"{api}/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters},
            headers=auth,
            timeout=30,
        ).json()
        run_id = flow_run["id"]
        checkpoints = self.root / "worker" / "checkpoints"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(checkpoints.glob("*.pt")):
            time.sleep(1)  # the first checkpoint: epoch 1 is done
        killed, lost_workers = [], []
        for name in team_setup.WORKERS:
            log = (self.setup.logs / f"{name}.log").read_text()
            if f"submitting flow run '{run_id}'" in log and f"Aborted submission of flow run '{run_id}'" not in log:
                killed.append(self.setup.alive()[name])
                lost_workers.append(name)
        killed += flow_run_processes(run_id)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        for pid in killed:  # the worker is this process's child (started in-process): reap it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        killed_at = time.monotonic()
        state = "?"
        while time.monotonic() < killed_at + 300:
            state = requests.get(f"{api}/flow_runs/{run_id}", headers=auth, timeout=30).json()["state"]["type"]
            if state != "RUNNING":
                break
            time.sleep(5)
        lines = [f"killed pids {killed} (worker and flow run) after epoch 1; the flow run became {state} "
                 f"{time.monotonic() - killed_at:.0f} s later"]  # fmt: skip
        code, output = self.run(self.command("run", "--resume", output="worker"))
        resumed = re.findall(r"resumed from the checkpoint after epoch (\d+)", output)
        lines.append(
            f"recovery `digitflow run ... --resume`: exit {code}, "
            f"resumed after epoch {resumed[-1] if resumed else '?'}, "
            f"test accuracy {self.accuracy(output)} (baseline {self.figures['baseline']})"
        )
        for name in lost_workers:  # the lost worker started again
            self.setup.start_worker(name, self.values)
        time.sleep(3)
        lines.append(f"workers running again: {sorted(set(self.setup.alive()) & set(team_setup.WORKERS))}")
        self.report("a worker and its flow run killed with SIGKILL", lines)

    def mlflow_epochs(self, output: str, found: list[str] | None = None) -> list[str]:
        """What MLflow holds of the run (the summary's run id, or ``found``): its status, the epochs its train
        child logged (metric train/loss), each child's artifact files, and the files the baseline's children
        have that this run's lack (lost)."""
        found = found or re.findall(r"MLflow run: ([0-9a-f]{32})", output)
        if not found:
            return ["no MLflow run id in the output"]
        held = self.held(found[-1])
        lines = [f"MLflow: parent {held.pop('status')}; children (train/loss epochs, artifact files): {held}"]
        if "baseline" in self.runs and found[-1] != self.runs["baseline"]:
            base = self.held(self.runs["baseline"])
            base.pop("status")
            lacking = {}
            for name, (_, files) in base.items():
                have = set(held[name][1]) if name in held else set()
                if set(files) - have:
                    lacking[name] = sorted(set(files) - have)
            counts = {name: len(files) for name, (_, files) in base.items()}
            lines.append(f"baseline's children (artifact files): {counts}; lacking here: {lacking or 'none'}")
        return lines

    def held(self, run_id: str) -> dict[str, Any]:
        """``status`` of the parent of ``run_id`` (or itself), and child name -> (epochs, artifact files)."""
        import mlflow

        os.environ.update({k: v for k, v in team_setup.read_env_file(self.setup.secrets / "admin.env").items()
                           if k.startswith("MLFLOW_TRACKING_")})  # fmt: skip
        client = mlflow.MlflowClient(tracking_uri=self.setup.mlflow_url)
        run = client.get_run(run_id)
        parent = client.get_run(run.data.tags.get("mlflow.parentRunId", run_id))
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")

        def files(child: str, path: str | None = None) -> list[str]:
            out = []
            for item in client.list_artifacts(child, path):
                out += files(child, item.path) if item.is_dir else [item.path]
            return out

        out: dict[str, Any] = {"status": parent.info.status}
        for child in children:
            epochs = len(client.get_metric_history(child.info.run_id, "train/loss")) or None
            out[str(child.info.run_name)] = (epochs, files(child.info.run_id))
        return out


def flow_run_processes(run_id: str) -> list[int]:
    """Pids of processes whose environment names the flow run (the process a worker started for it)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def last_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("digitflow: error:")]
    return errors[-1] if errors else output.strip().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())

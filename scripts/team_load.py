"""Five runs at once on the team setup: two nightly deployment runs on its two workers and three ``digitflow
run`` from the command line (as a user ``make team-user`` made), then the promotions; reports each target.

``python scripts/team_load.py --data-dir ../shared/data`` starts its own setup (scripts/team.py) on free
loopback ports in a temporary folder, and stops it at the end. The runs are small (600 images, 1 epoch, no
attacks; seeds 1-5) so that five fit on two cores; the CLI runs are then promoted with ``digitflow promote``,
as the trigger promotes the nightly ones. Reported: how many completed, whether every run has its metrics and
artifacts, every model version's recorded decision, and whether the champion is the best by the rule.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import team as team_setup
from serve import ROOT

STEPS = ("train", "evaluate", "cross-domain", "export")  # the children that log artifacts
OPTIONS = dict(
    train="mnist:test[:600]", test="mnist:test[9000:]", target=["usps:test[:300]"], epochs=1, attack=["none"]
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/team_load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR") or str(ROOT.parent / "shared/data"))
    args = parser.parse_args(argv)
    with team_setup.scratch_team("digitflow-load-", args.data_dir, ["mnist-nightly", "evaluate-and-promote"]) as (
        setup,
        root,
    ):
        setup.add_user("alice")
        return load(setup, root)


def load(setup: team_setup.Team, root: Path) -> int:
    """Submit the five runs at once, wait for them and the promotions, and report the targets."""
    values = team_setup.read_env_file(setup.secrets / "team.env")
    auth = {"Authorization": team_setup.basic_token(values["PREFECT_SERVER_API_AUTH_STRING"])}
    api = setup.prefect_api
    env = {**os.environ, "DIGITFLOW_CREDENTIALS": str(setup.secrets / "users" / "alice.env")}
    env["PREFECT_HOME"] = str(root / "alice-prefect")
    env.pop(team_setup.MARKER, None)
    started = time.monotonic()
    deployment = requests.get(f"{api}/deployments/name/digitflow-pipeline/mnist-nightly", headers=auth, timeout=30)
    nightly = []
    for seed in (1, 2):
        parameters: dict[str, Any] = {**OPTIONS, "offline": True, "seed": seed, "cache_dir": str(root / "cache"),
                                      "output_dir": str(root / f"nightly{seed}")}  # fmt: skip
        created = requests.post(
            f"{api}/deployments/{deployment.json()['id']}/create_flow_run",
            json={"parameters": parameters},
            headers=auth,
            timeout=30,
        )
        nightly.append(created.json()["id"])
    cli = []
    for seed in (3, 4, 5):
        command = [sys.executable, "-m", "flows", "run", "--train", str(OPTIONS["train"]),
                   "--test", str(OPTIONS["test"]), "--target", "usps:test[:300]", "--epochs", "1",
                   "--attack", "none", "--offline", "--seed", str(seed),
                   "--cache-dir", str(root / "cache"), "--output-dir", str(root / f"cli{seed}")]  # fmt: skip
        cli.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [process.communicate()[0] for process in cli]
    states = {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        states = {
            i: requests.get(f"{api}/flow_runs/{i}", headers=auth, timeout=30).json()["state"]["type"] for i in nightly
        }
        if all(state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for state in states.values()):
            break
        time.sleep(3)
    took = time.monotonic() - started
    completed = sum(state == "COMPLETED" for state in states.values()) + sum(p.returncode == 0 for p in cli)
    print(f"\n5 runs at once (2 nightly on the workers, 3 `digitflow run` as alice): {completed} of 5 completed "
          f"in {took:.0f} s; nightly {list(states.values())}, CLI exits {[p.returncode for p in cli]}")  # fmt: skip
    for process, output in zip(cli, outputs, strict=True):
        if process.returncode:
            print("  a CLI run failed: " + output.strip().splitlines()[-1])
    cli_runs = [found[-1] for output in outputs if (found := re.findall(r"MLflow run: ([0-9a-f]{32})", output))]
    for run_id in cli_runs:  # the trigger promotes the nightly runs; these are promoted by hand, one at a time
        promoted = subprocess.run([sys.executable, "-m", "flows", "promote", "--run-id", run_id], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
        print(f"  digitflow promote --run-id {run_id[:8]}...: exit {promoted.returncode}")
    wait_for_promotions(api, auth, 2)
    return report(setup)


def wait_for_promotions(api: str, auth: dict[str, str], count: int) -> None:
    """Until ``count`` evaluate-and-promote runs are final (10 minutes at most)."""
    body = {"deployments": {"name": {"any_": ["evaluate-and-promote"]}}}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = requests.post(f"{api}/flow_runs/filter", json=body, headers=auth, timeout=30).json()
        final = [run for run in runs if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        if len(final) >= count:
            print(f"  evaluate-and-promote runs: {[run['state']['type'] for run in final]}")
            return
        time.sleep(3)
    print("  evaluate-and-promote did not finish within 10 minutes")


def report(setup: team_setup.Team) -> int:
    """Metrics and artifacts of every pipeline run, the decision on every version, the champion by the rule."""
    import mlflow

    from digitflow.config import PromotionConfig
    from digitflow.evaluation.promotion import decide

    admin = team_setup.read_env_file(setup.secrets / "admin.env")
    os.environ.update({k: v for k, v in admin.items() if k.startswith("MLFLOW_TRACKING_")})
    client = mlflow.MlflowClient(tracking_uri=setup.mlflow_url, registry_uri=setup.mlflow_url)
    versions = client.search_model_versions("name = 'digitflow-lenet'")
    missing = []
    for version in versions:
        parent = client.get_run(str(version.run_id))
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        logged = {str(c.info.run_name).split(" ")[0]: bool(client.list_artifacts(c.info.run_id)) for c in children}
        # the steps that write files (the prepare steps have none to write)
        if "test/accuracy" not in parent.data.metrics or not all(logged.get(step) for step in STEPS):
            missing.append(f"{version.version}: {logged}")
    decisions = {v.version: v.tags.get("promotion.decision", "none") for v in versions}
    champion = client.get_model_version_by_alias("digitflow-lenet", "champion")
    figures = {v.version: client.get_run(str(v.run_id)).data.metrics for v in versions}
    beaten_by = [v for v in figures if v != champion.version
                 and decide(figures[v], figures[champion.version], PromotionConfig()).promote]  # fmt: skip
    print(f"  model versions: {len(versions)}; metrics and artifacts missing on: {missing or 'none'}")
    print(f"  decisions recorded: {decisions}")
    print(f"  champion: version {champion.version}; a candidate the rule prefers to it: {beaten_by or 'none'}")
    return 0 if len(versions) == 5 and not missing and "none" not in decisions.values() and not beaten_by else 1


if __name__ == "__main__":
    sys.exit(main())

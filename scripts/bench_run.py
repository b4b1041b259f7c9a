"""Where a whole `digitflow run` spends its wall time, cold and warm, on the 8k and the 60k protocol.

    python scripts/bench_run.py --data-dir ../shared/data [--protocols 8k 60k] [-- EXTRA RUN OPTIONS]
    python scripts/bench_run.py --data-dir ../shared/data --together 2 [--protocols 8k]

For each protocol it runs the default pipeline three times, each in a process of its own as a user would:
cold (a new Prefect home, MLflow store, dataset cache and output folder), warm (the same ones again, with
the local Prefect server the cold run started still up, as for runs minutes apart), and warm with that
server stopped first (as for the first run after its idle time). It prints the breakdown each run logged
(``time/*``: start-up, tracking, data, training, evaluation, cross-domain, robustness, export and its
parts) beside the wall time seen from outside, and the pipeline's own time: the wall time less the work
(training, evaluation, cross-domain testing, attacks), from the flow's clock (``time/own``) and from
outside (``outside/own``: the process's whole life, exit included).
Run it on a quiet machine: it measures time. ``make bench-run ARGS="--data-dir ../shared/data"``.

``--together N`` measures runs that share the machine instead: one run alone, then N started at the same
moment (each with its own Prefect home and store, all warm), and prints each one's training speed
(images/s) against the run alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTOCOLS = {
    "8k": ["--train", "mnist:test[:8000]", "--test", "mnist:test[8000:]"],
    "60k": ["--train", "mnist:train", "--test", "mnist:test"],
}
RUN_ID = re.compile(r"MLflow run: ([0-9a-f]{32})")
SPEED = re.compile(r"training: [0-9.]+ s, ([0-9,]+) images/s")


def start(protocol: str, folder: Path, data_dir: str, extra: list[str]) -> subprocess.Popen[str]:
    """Start one `digitflow run` in its own process with its state in ``folder``."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder / "prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows", "run", *PROTOCOLS[protocol], "--offline", "--data-dir", data_dir]
    command += ["--cache-dir", str(folder / "cache"), "--output-dir", str(folder / "outputs"), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], folder: Path) -> tuple[str, dict[str, float]]:
    """Wait for a run; its stdout and the ``time/*`` metrics it logged."""
    stdout, stderr = process.communicate()
    found = RUN_ID.search(stdout)
    if process.returncode != 0 or not found:
        sys.exit(f"bench_run: a run failed ({process.returncode}): {stderr.strip()[-2000:]}")
    import mlflow  # after the run: the benchmark's own imports are not in its figures

    metrics = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").get_run(found.group(1)).data.metrics
    return stdout, {k: v for k, v in metrics.items() if k.startswith("time/")}


def run_once(protocol: str, folder: Path, data_dir: str, extra: list[str]) -> dict[str, float]:
    """One run, waited for: its ``time/*`` metrics, ``outside/wall`` (its wall time as a user waits) and
    ``outside/own`` (that less the work)."""
    begin = time.perf_counter()
    _, times = finish(start(protocol, folder, data_dir, extra), folder)
    wall = time.perf_counter() - begin
    return {**times, "outside/wall": wall, "outside/own": wall - times.get("time/work", 0.0)}


def stop_server(folder: Path) -> None:
    """Stop the local Prefect server the runs in ``folder`` started (flows/local_server.py)."""
    from flows.local_server import stop

    stop(folder / "prefect" / "digitflow-server")


def speed(stdout: str) -> float:
    """The training speed a run's summary gives, images/s."""
    found = SPEED.search(stdout)
    return float(found.group(1).replace(",", "")) if found else float("nan")


def together(protocol: str, count: int, data_dir: str, extra: list[str]) -> None:
    """One run alone, then ``count`` at once: each one's images/s and its share of the speed alone."""
    with tempfile.TemporaryDirectory(prefix=f"bench-run-together-{protocol}-") as tmp:
        folders = [Path(tmp, str(i)) for i in range(count)]
        for folder in folders:  # warm: the cache, the stores and the Prefect homes exist
            finish(start(protocol, folder, data_dir, extra), folder)
        alone = speed(finish(start(protocol, folders[0], data_dir, extra), folders[0])[0])
        runs = [start(protocol, folder, data_dir, extra) for folder in folders]
        speeds = [speed(finish(run, folder)[0]) for run, folder in zip(runs, folders, strict=True)]
        for folder in folders:
            stop_server(folder)
    print(f"{protocol}: one run alone trained at {alone:,.0f} images/s; {count} at once:")
    for i, value in enumerate(speeds, 1):
        print(f"  run {i}: {value:,.0f} images/s, {value / alone:.0%} of alone")
    print(f"  together: {sum(speeds):,.0f} images/s, {sum(speeds) / alone:.0%} of one alone")


def table(results: dict[str, dict[str, float]]) -> str:
    """One row per figure, one column per run."""
    keys = ["outside/wall", "outside/own", "time/wall", "time/own", "time/work"]
    for figures in results.values():
        keys += [k for k in figures if k not in keys]
    width = max(len(k) for k in keys) + 2
    lines = [" " * width + "".join(f"{name:>12}" for name in results)]
    for key in keys:
        cells = "".join(f"{results[name][key]:>12.1f}" if key in results[name] else f"{'':>12}" for name in results)
        lines.append(f"{key:<{width}}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR", "data"))
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["8k", "60k"])
    parser.add_argument("--together", type=int, default=None, metavar="N", help="N runs at once (see above)")
    parser.add_argument("extra", nargs="*", help="more digitflow run options, after --")
    args = parser.parse_args()
    if args.together:
        for protocol in args.protocols:
            together(protocol, args.together, args.data_dir, args.extra)
        return
    results: dict[str, dict[str, float]] = {}
    for protocol in args.protocols:
        with tempfile.TemporaryDirectory(prefix=f"bench-run-{protocol}-") as tmp:
            for mode in ("cold", "warm", "warm/new"):  # the cold run leaves the state the warm ones find
                print(f"{protocol} {mode} ...", file=sys.stderr, flush=True)
                if mode == "warm/new":  # the local Prefect server has idled out since
                    stop_server(Path(tmp))
                results[f"{protocol} {mode}"] = run_once(protocol, Path(tmp), args.data_dir, args.extra)
            stop_server(Path(tmp))
    print(f"seconds; 'own' = wall - work (training, evaluation, cross-domain, attacks); {os.cpu_count()} cores")
    print(table(results))


if __name__ == "__main__":
    main()

"""Ctrl-C, SIGTERM and kill -9 on a real ``digitflow run``: ends in seconds, one line, MLflow runs KILLED,
no process left behind (flows/interrupt.py).

Each run is a subprocess in a session of its own, as a command started from a terminal is, training
on tiny fake files for many short epochs (each one logs to MLflow, so signals often land in MLflow's
writes). Linux only: the checks read /proc. What happens to the local Prefect server after ``kill -9``
is in test_local_server.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from tests.fakedata import write_fake_datasets

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 1000  # tiny data: milliseconds each, so the run is still training when the signal comes
STARTUP_S = 240  # imports (+ the local Prefect server's start): ~35 s on a busy 2-core machine, ~10 s idle
EXIT_S = 15  # signal to exit: ~1 s measured on a busy 2-core machine
INTERRUPTED = re.compile(
    rf"^digitflow: interrupted after epoch (\d+) of {EPOCHS}; continue with: digitflow run .* --resume$"
)

# main() on fake files: the registry is patched for them first, as tests.fakedata does in-process.
RUN = """
import sys
from pathlib import Path
from _pytest.monkeypatch import MonkeyPatch
from tests.fakedata import patch_registry
patch_registry(MonkeyPatch(), Path(sys.argv[1]))
from flows.cli import main
sys.exit(main(sys.argv[2:]))
"""


def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
    }


class Run:
    """A subprocess whose stdout and stderr are read as they come; ``seen`` waits for a line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._new_line = threading.Condition()
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._new_line:
                lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def seen(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.stdout + self.stderr:
                    if match := re.search(pattern, line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    self.kill()
                    pytest.fail(f"no line matching {pattern!r}; output:\n" + "\n".join(self.stdout + self.stderr))
                self._new_line.wait(min(left, 1.0))

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """The exit code and the seconds it took (None if still running after ``timeout``: killed)."""
        start = time.monotonic()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - start
        if code is None:
            self.kill()
        time.sleep(0.2)  # let the readers take the last lines
        return code, elapsed

    def kill(self) -> None:
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


def _stats() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, process group) for every process, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        out[int(stat.parent.name)] = (state, int(ppid), int(pgrp))
    return out


def descendants(pid: int) -> list[int]:
    stats, found, todo = _stats(), [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (_, ppid, _) in stats.items() if ppid == parent]
        found += children
        todo += children
    return found


def alive(pids: list[int], group: int) -> list[str]:
    """Those of ``pids``, and members of process group ``group``, that still run (zombies excluded)."""
    stats = _stats()
    left = {p for p in pids if p in stats} | {p for p, (_, _, pgrp) in stats.items() if pgrp == group}
    return [_cmdline(p) for p in sorted(left) if stats.get(p, ("Z",))[0] != "Z"]


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid}: (gone)"


def start_run(tmp_path: Path) -> tuple[Run, Path]:
    data_dir = tmp_path / "data"
    write_fake_datasets(data_dir, names=("mnist",))
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    args = [
        "run",
        "--train",
        "mnist:train",
        "--test",
        "mnist:test",
        "--no-target",
        "--offline",
        "--no-augment",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "32",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output-dir",
        str(tmp_path / "out"),
        "--checkpoint",
        str(checkpoint),
        "--experiment",
        "interrupt-test",
    ]
    return Run([sys.executable, "-c", RUN, str(data_dir), *args], env(tmp_path)), checkpoint


@pytest.mark.parametrize(
    ("signum", "to_group", "exit_code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-process"],
)
def test_a_signal_ends_the_run_in_seconds_killed_with_one_line(tmp_path, signum, to_group, exit_code):
    run, checkpoint = start_run(tmp_path)
    run.seen(rf"epoch [1-9]\d*/{EPOCHS}", STARTUP_S)  # training: one epoch done
    processes = descendants(run.process.pid)
    # the Prefect server is not the run's child (flows/local_server.py): Ctrl-C to the group cannot stop it
    assert not any("uvicorn" in _cmdline(p) for p in processes)

    (os.killpg if to_group else os.kill)(run.process.pid, signum)  # a terminal's Ctrl-C signals the group
    code, seconds = run.wait(EXIT_S)
    output = "\n".join(run.stdout + run.stderr)

    assert code == exit_code, f"exit code {code} after {seconds:.1f} s; output:\n{output}"
    assert "Traceback" not in output
    lines = [line for line in run.stderr if line.startswith("digitflow:")]
    assert len(lines) == 1, output
    interrupted = INTERRUPTED.match(lines[0])
    assert interrupted, output
    epoch = int(interrupted[1])
    # --resume continues from the checkpoint: the epoch the line names (or the next one, if the signal
    # came between writing a checkpoint and reporting its epoch)
    assert epoch >= 1
    assert torch.load(checkpoint, weights_only=True)["epoch"] in (epoch, epoch + 1)
    assert alive(processes, group=run.process.pid) == []

    mlflow.set_tracking_uri(env(tmp_path)["MLFLOW_TRACKING_URI"])
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["interrupt-test"], output_format="list")}
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"
    assert runs["train"].info.status == "KILLED"
    assert runs["prepare mnist:train"].info.status == "FINISHED"


# A signal while MLflow runs (here: a function in a module named mlflow.*) waits for it to return.
HOLD_BACK = """
import os, signal, time
from flows.interrupt import RunSignals

done = []  # written inside the fake MLflow call: printing there could itself be interrupted on its way out
fake_mlflow = {"__name__": "mlflow.store.fake", "os": os, "signal": signal, "time": time, "done": done}
exec("def write():\\n os.kill(os.getpid(), signal.SIGINT)\\n time.sleep(0.3)\\n done.append('written')", fake_mlflow)
try:
    with RunSignals(["run"], 3):
        fake_mlflow["write"]()
        time.sleep(60)  # the held-back signal interrupts a blocking call too
        print("not interrupted", flush=True)
except KeyboardInterrupt:
    print(*done, "interrupted", flush=True)
"""


def test_a_signal_during_an_mlflow_call_waits_for_it_to_return(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", HOLD_BACK], cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=40
    )
    assert result.stdout.split() == ["written", "interrupted"], result.stdout + result.stderr
    assert result.returncode == 130  # the exit code of an interrupted run, whatever main() returns


@pytest.mark.parametrize(
    ("completed", "where"),
    [
        (None, "before training started"),
        (0, "in epoch 1 of 20, before any epoch completed"),
        (4, "after epoch 4 of 20"),
        (20, "after training (all 20 epochs)"),
    ],
)
def test_the_line_says_where_training_got_to_and_how_to_resume(monkeypatch, completed, where):
    from flows.interrupt import RunSignals
    from reporting.progress import training_progress

    monkeypatch.setattr(training_progress, "completed", completed)
    argv = ["run", "--train", "mnist:test[:8000]", "--epochs", "20"]
    assert RunSignals(argv, 20).message() == (
        f"digitflow: interrupted {where}; continue with: digitflow run --train 'mnist:test[:8000]' --epochs 20 --resume"
    )
    assert RunSignals([*argv, "--resume"], 20).message().count("--resume") == 1

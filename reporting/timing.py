"""Where a run's wall time went: the phases of the flow, the work inside them, and the rest.

A flow times its phases with a :class:`RunClock`: ``clock.lap("data")`` after the data steps gives them
the time since the previous lap. The start-up phase is the time from the process's start to the clock's
(imports, the local Prefect server, the flow run). Tasks mark the work they exist for with :func:`work`
(``with work("evaluation"): ...``: the forward passes, not the child run or the plots around them) and
the parts of a phase worth a row of their own with :func:`part` (``verification``, ``registration``
inside the export). The breakdown then says how much of the wall time was the work and how much the
pipeline's own cost::

    time/wall = startup + tracking + data + training + ... + export + other      (phases, seconds)
    time/own  = time/wall - time/work   (training + evaluation + cross_domain + attacks work)

Work and parts are summed per process and taken by the clock that is running; the pipeline runs its
tasks one after another in its own process, so they are that run's.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

WORK = ("training", "evaluation", "cross_domain", "attacks")  # what a run is for; the rest is its own cost
_recorded: dict[str, float] = defaultdict(float)  # "work/<name>" and "<phase>/<part>" -> seconds, this process


def process_start() -> float:
    """When this process started (``time.time()`` scale): from /proc on Linux, else this module's import."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


@contextlib.contextmanager
def work(name: str) -> Iterator[None]:
    """Count the body's seconds as work ``name`` (one of :data:`WORK`) of the run in progress."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _recorded[f"work/{name}"] += time.perf_counter() - start


@contextlib.contextmanager
def part(phase: str, name: str) -> Iterator[None]:
    """Count the body's seconds as part ``name`` of ``phase`` (``export``/``verification``)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _recorded[f"{phase}/{name}"] += time.perf_counter() - start


def add_work(name: str, seconds: float) -> None:
    """Count ``seconds`` measured elsewhere (the training loop's epochs) as work ``name``."""
    _recorded[f"work/{name}"] += seconds


class RunClock:
    """The phases of one flow run, timed from the process's start (or ``start``) to :meth:`breakdown`."""

    def __init__(self, start: float | None = None) -> None:
        self.start = process_start() if start is None else start
        self.phases: dict[str, float] = {"startup": max(0.0, time.time() - self.start)}
        self._last = time.perf_counter()
        _recorded.clear()  # work and parts from here on are this run's

    def lap(self, name: str) -> None:
        """Add the time since the previous lap (or the clock's start) to phase ``name``."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now

    def breakdown(self) -> dict[str, float]:
        """``time/<phase>``, ``time/<phase>/<part>``, ``time/work/<name>``, ``time/wall`` and ``time/own``
        (the wall time less the work), in seconds, as MLflow metrics."""
        wall = time.time() - self.start
        phases = dict(self.phases)
        phases["other"] = max(0.0, wall - sum(phases.values()))  # between the timed phases
        out = {f"time/{name}": seconds for name, seconds in phases.items()}
        out.update({f"time/{key}": seconds for key, seconds in _recorded.items()})
        work_total = sum(_recorded.get(f"work/{name}", 0.0) for name in WORK)
        out.update({"time/wall": wall, "time/work": work_total, "time/own": max(0.0, wall - work_total)})
        return out


def breakdown_line(times: dict[str, float]) -> str:
    """``time: 44.3 s wall, 19.5 s own (startup 6.1, data 0.8, training 9.9 [work 8.7], ...)`` for a summary."""
    phases = []
    for key, seconds in times.items():
        name = key.removeprefix("time/")
        if name in ("wall", "own", "work") or "/" in name:
            continue
        inside = (
            [f"work {times[f'time/work/{_WORK_OF[name]}']:.1f}"] if f"time/work/{_WORK_OF.get(name)}" in times else []
        )
        inside += [
            f"{sub.rsplit('/', 1)[1]} {value:.1f}" for sub, value in times.items() if sub.startswith(f"time/{name}/")
        ]
        if seconds >= 0.05 or inside:  # a phase that took no time and holds nothing: left out
            phases.append(f"{name} {seconds:.1f}" + (f" [{', '.join(inside)}]" if inside else ""))
    return f"time: {times['time/wall']:.1f} s wall, {times['time/own']:.1f} s the pipeline's own ({', '.join(phases)})"


_WORK_OF = {"training": "training", "evaluation": "evaluation", "cross_domain": "cross_domain", "robustness": "attacks"}

"""The run's clock: phases from laps, work and parts from the tasks, own time = wall - work."""

import time

import pytest

from reporting import timing


def test_laps_work_and_parts_make_the_breakdown():
    clock = timing.RunClock(start=time.time() - 2.0)  # a process that started 2 s ago
    time.sleep(0.02)
    clock.lap("data")
    with timing.work("training"):
        time.sleep(0.03)
    timing.add_work("training", 1.0)  # epochs measured by the loop
    clock.lap("training")
    with timing.part("export", "verification"):
        time.sleep(0.01)
    clock.lap("export")
    times = clock.breakdown()
    assert times["time/startup"] == pytest.approx(2.0, abs=0.05)
    assert times["time/data"] >= 0.02
    assert times["time/work/training"] == pytest.approx(1.03, abs=0.02)
    assert times["time/export/verification"] >= 0.01
    phases = sum(times[f"time/{p}"] for p in ("startup", "data", "training", "export", "other"))
    assert phases == pytest.approx(times["time/wall"], abs=0.01)
    assert times["time/own"] == pytest.approx(times["time/wall"] - times["time/work"])
    line = timing.breakdown_line(times)
    assert line.startswith(f"time: {times['time/wall']:.1f} s wall, {times['time/own']:.1f} s the pipeline's own (")
    assert "training " in line
    assert "[work 1.0]" in line
    assert "verification 0.0" in line


def test_a_new_clock_forgets_the_previous_runs_work():
    timing.add_work("attacks", 5.0)
    assert "time/work/attacks" not in timing.RunClock().breakdown()


def test_the_process_start_is_in_the_past():
    assert 0 <= time.time() - timing.process_start() < 24 * 3600

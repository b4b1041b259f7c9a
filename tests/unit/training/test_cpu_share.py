"""Runs on one machine share its cores: each counts the live runs and takes its part."""

import subprocess
import sys
import textwrap

import pytest
import torch

from digitflow.training import cpu_share


def test_fair_threads():
    assert cpu_share.fair_threads(2, 1) == 2
    assert cpu_share.fair_threads(2, 2) == 1
    assert cpu_share.fair_threads(2, 3) == 1  # never none
    assert cpu_share.fair_threads(16, 3) == 5


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITFLOW_RUNS_DIR", str(tmp_path / "runs"))
    for name in cpu_share.USER_THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu_share, "_held", None)
    threads = torch.get_num_threads()
    yield tmp_path / "runs"
    torch.set_num_threads(threads)  # apply() changed the process's threads: the next tests get them back


def test_live_runs_are_counted_and_a_dead_ones_file_is_removed(runs_dir):
    cpu_share.join()
    assert cpu_share.active_runs() == 1
    code = textwrap.dedent(
        """
        import sys, time
        from digitflow.training import cpu_share
        cpu_share.join()
        print("joined", flush=True)
        sys.stdin.readline()  # lives until the test closes its stdin
        """
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdin is not None
    assert other.stdout is not None
    try:
        assert other.stdout.readline().strip() == "joined"
        assert cpu_share.active_runs() == 2
        assert cpu_share.apply() == cpu_share.fair_threads(cpu_share.cpu_cores(), 2)
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert cpu_share.active_runs() == 1  # the other process is gone: its file with it
    assert sorted(p.name for p in runs_dir.iterdir()) == [f"{__import__('os').getpid()}.run"]
    cpu_share.leave()
    assert list(runs_dir.iterdir()) == []


def test_a_run_counts_only_while_it_computes(runs_dir):
    with cpu_share.share() as threads:
        assert threads == cpu_share.fair_threads(cpu_share.cpu_cores(), 1)
        assert len(list(runs_dir.glob("*.run"))) == 1
        with cpu_share.share():  # nested: the same registration
            assert len(list(runs_dir.glob("*.run"))) == 1
    assert list(runs_dir.glob("*.run")) == []  # a process that lives on (a notebook, a test session) no longer counts


def test_a_thread_count_set_by_the_user_wins(runs_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    with cpu_share.share():
        assert not runs_dir.exists() or not list(runs_dir.iterdir())
    assert cpu_share.apply() == before

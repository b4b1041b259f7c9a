"""The benchmark script runs end to end on tiny data (one round, no workers) and refuses bad input
in one line: it is a README command, so a crash there is a bug. Its figures are not checked."""

from __future__ import annotations

import sys

import pytest

from tests.fakedata import fake_data_dir


def run_bench(monkeypatch, *args: str) -> None:
    from scripts import bench

    monkeypatch.setattr(sys, "argv", ["bench.py", *args])
    bench.main()


def test_bench_prints_a_row_per_loop(tmp_path, monkeypatch, capsys):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    run_bench(monkeypatch, "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
              "--repeats", "1", "--workers", "0")
    rows = [line for line in capsys.readouterr().out.splitlines() if "images/s" in line]
    assert rows[0].startswith("seed loop") and "x 1.00" in rows[0]
    assert any("default augmentation" in row for row in rows)
    assert any("no augmentation" in row for row in rows)


def test_bench_refuses_zero_repeats(monkeypatch, capsys):
    with pytest.raises(SystemExit) as excinfo:
        run_bench(monkeypatch, "--repeats", "0")
    assert excinfo.value.code == 2
    assert "--repeats and the batch sizes must be at least 1" in capsys.readouterr().err

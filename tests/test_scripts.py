"""The benchmark script runs end to end on tiny data (one round, no workers) and refuses bad input
in one line: it is a documented command, so a crash there is a bug. Its figures are not checked."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest

from tests.fakedata import fake_data_dir


def run_bench(monkeypatch, *args: str) -> None:
    import bench

    monkeypatch.setattr(sys, "argv", ["bench.py", *args])
    bench.main()


def test_bench_prints_a_row_per_loop(tmp_path, monkeypatch, capsys):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    run_bench(
        monkeypatch,
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--repeats",
        "1",
        "--workers",
        "0",
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if "images/s" in line]
    assert rows[0].startswith("seed loop")
    assert re.search(r"x\s*1\.00 ", rows[0])
    assert any("default augmentation" in row for row in rows)
    assert any("no augmentation" in row for row in rows)


def test_bench_refuses_zero_repeats(monkeypatch, capsys):
    with pytest.raises(SystemExit) as excinfo:
        run_bench(monkeypatch, "--repeats", "0")
    assert excinfo.value.code == 2
    assert "--repeats, --accuracy-seeds, --max-epochs and the batch sizes must be at least 1" in capsys.readouterr().err


def test_bench_times_every_seed_to_the_target_accuracy(tmp_path, monkeypatch, capsys):
    # mnist:test[8000:] is the held-out split: the fake test split needs more than 8000 images.
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",), sizes={"test": 8032})
    run_bench(
        monkeypatch,
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--repeats",
        "1",
        "--workers",
        "0",
        "--to-accuracy",
        "0.05",
        "--only-to-accuracy",  # the images/s rows: the first test
        "--accuracy-seeds",
        "2",
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("engine defaults to 0.05"))
    assert "median" in line
    assert "not reached" not in line
    assert "batch 64, lr 0.05, CosineAnnealingLR over 6 epochs" in line  # the CPU defaults, schedule and all
    assert len(re.findall(r"\d+\.\d{3} s/\d+ ep", line)) == 2  # one entry per seed


def test_time_to_accuracy_reports_seeds_that_missed_apart():
    from bench import describe_time_to_accuracy

    line = describe_time_to_accuracy([(5.0, 6, 0.991), (9.0, 30, 0.987), (7.0, 8, 0.992)], 0.99, 30)
    assert line.startswith("median 6.000 s, 7 epochs (2/3 seeds reached it)")
    assert "not reached in 30 epochs (0.9870)" in line
    assert describe_time_to_accuracy([(9.0, 30, 0.98)], 0.99, 30).startswith("not reached by any of 1 seeds")


def test_bench_to_accuracy_honours_the_batch_size(tmp_path, monkeypatch, capsys):
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",), sizes={"test": 8032})
    run_bench(
        monkeypatch,
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--batch-size",
        "256",
        "--repeats",
        "1",
        "--workers",
        "0",
        "--to-accuracy",
        "0.05",
        "--only-to-accuracy",
        "--accuracy-seeds",
        "1",
        "--max-epochs",
        "2",
    )
    out = capsys.readouterr().out
    assert "(batch 256, lr 0.05, CosineAnnealingLR over 2 epochs" in out


def test_bench_rows_honour_the_batch_size(tmp_path, monkeypatch, capsys):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    run_bench(
        monkeypatch,
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--batch-size",
        "256",
        "--repeats",
        "1",
        "--workers",
        "0",
    )
    assert "engine defaults, batch 256," in capsys.readouterr().out


def test_sweep_runs_settings_on_the_splits_given(tmp_path, monkeypatch, capsys):
    import sweep

    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("fashion-mnist",))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "sweep.py",
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--train",
            "fashion-mnist:train",
            "--test",
            "fashion-mnist:test",
            "--no-target",
            "--only",
            "no-augment",
            "hflip",
            "--seeds",
            "1",
            "--first-seed",
            "3",
            "--device",
            "cpu",
        ],
    )
    monkeypatch.setattr(sweep, "SETTINGS", {k: dataclasses.replace(v, epochs=1) for k, v in sweep.SETTINGS.items()})
    sweep.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device cpu; train fashion-mnist:train; columns: fashion-mnist:test")
    assert [line.split()[0] for line in lines[1:]] == ["no-augment", "hflip"]
    assert all("fashion-mnist:test 0." in line or "fashion-mnist:test 1." in line for line in lines[1:])


def test_predict_bench_times_rounds_of_the_prediction_on_a_kaggle_csv(tmp_path, monkeypatch, capsys):
    import predict_bench

    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",))
    argv = ["predict_bench.py", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--rounds", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    predict_bench.main()
    out = capsys.readouterr().out
    assert out.startswith("40 images of mnist:test as a Kaggle CSV")
    assert len(re.findall(r"^round \d: .* images/s \(model .*read .*score .*write .*\); accuracy", out, re.M)) == 2
    assert re.search(r"prediction task's work: median [\d.]+ s, [\d,]+ images/s", out)


def test_the_standard_protocol_prints_a_line_per_run_and_a_markdown_row_per_model(tmp_path, monkeypatch, capsys):
    import standard_protocol

    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist", "usps"))
    argv = ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--epochs", "1"]
    assert standard_protocol.main([*argv, "--seeds", "2", "--models", "lenet,tests.toy_models:tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("standard protocol: train mnist:train, test mnist:test, targets usps:test; cpu")
    runs = [line.split(" seed ")[0].strip() + f" {line.split(' seed ')[1][0]}" for line in out if " seed " in line]
    assert runs == ["lenet 0", "tests.toy_models:tiny 0", "lenet 1", "tests.toy_models:tiny 1"]  # interleaved
    table = [line for line in out if line.startswith("|")]
    assert table[0].split(" | ") == [
        "| model", "seeds", "test accuracy mean", "worst", "USPS accuracy mean", "worst", "training time mean (s)",
        "vs lenet |",
    ]  # fmt: skip
    assert table[2].startswith("| lenet | 2 | ")
    assert table[2].endswith(" | 1.00x |")
    assert table[3].startswith("| tests.toy_models:tiny | 2 | ")
    with pytest.raises(SystemExit) as info:
        standard_protocol.main([*argv, "--seeds", "0"])
    assert info.value.code == 2
    assert "--seeds, --epochs and --threads must be at least 1" in capsys.readouterr().err


def test_bench_inference_times_each_format_of_a_runs_files(tmp_path, monkeypatch, capsys):
    import bench_inference
    import torch

    from digitflow.export.exporters import export_torchscript
    from digitflow.export.inputs import for_export
    from digitflow.models import LeNet

    run = tmp_path / "exports" / "run"
    export_torchscript(for_export(LeNet().eval()), torch.rand(1, 1, 28, 28), run / "lenet.pt")  # a run's only file
    monkeypatch.setenv("CXX", "no-such-compiler++")  # AOTInductor left out, saying why: its compile takes long
    args = ["--export-dir", str(run), "--data-dir", str(tmp_path / "no-data"), "--calls", "3", "--passes", "1"]
    assert bench_inference.main([*args, "--no-cpp"]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| ") and "format" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| eager", "Python"],
        ["| TorchScript", "Python"],
        ["| torch.export", "Python"],
    ]
    assert "random images" in err
    assert "AOTInductor left out: AOTInductor needs a C++ compiler" in err
    with pytest.raises(SystemExit):
        bench_inference.main(["--export-dir", str(tmp_path)])  # no lenet.pt there
    assert "has no lenet.pt" in capsys.readouterr().err

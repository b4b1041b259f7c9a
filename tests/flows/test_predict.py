"""``digitflow predict`` and the flow digitflow-predict end to end, on a tiny exported model."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from digitflow.data.framing import frame_images
from digitflow.data.registry import DIGIT_CLASSES
from digitflow.export.exporters import export_torchscript
from digitflow.export.inputs import for_export
from digitflow.export.metadata import ModelMetadata
from digitflow.models import LeNet
from tests.fakedata import fake_digits, write_image_folder, write_kaggle_csv

REPO = Path(__file__).resolve().parents[2]

pytestmark = [  # MLflow loading the registered TorchScript model back when it logs it; not ours to fix
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning"),
]


@pytest.fixture
def model_file(tmp_path) -> Path:
    """An untrained LeNet exported as digitflow run exports: with its class names and framing."""
    torch.manual_seed(0)
    model = for_export(LeNet().eval())  # as the export task wraps it: PixelInput
    record = ModelMetadata(DIGIT_CLASSES, "resize")
    return export_torchscript(model, torch.rand(1, 1, 28, 28), tmp_path / "lenet.pt", metadata=record)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def expected_labels(model_file: Path, images: np.ndarray) -> list[int]:
    """What the exported file itself predicts for uint8 images, framed as its record says (resize)."""
    module = torch.jit.load(str(model_file))
    with torch.inference_mode():
        return module(frame_images(torch.from_numpy(images), "resize")).argmax(1).tolist()


def test_the_command_scores_a_folder_of_unlabeled_scans_and_logs_one_run(
    tmp_path, model_file, mlflow_store, prefect_server
):
    images, _ = fake_digits(6, size=(40, 30))  # another size: framed as the model says
    scans = tmp_path / "scans"
    write_image_folder(tmp_path / "tmp", images, np.zeros(6, dtype=np.int64))
    (tmp_path / "tmp" / "0").rename(scans)  # the images, no class sub-folders
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            "predict",
            "--model",
            str(model_file),
            "--input",
            f"folder:{scans}",
            "--output",
            str(out / "p.csv"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_store},
    )
    assert result.returncode == 0, result.stderr
    assert "digitflow predict finished" in result.stdout
    assert f"6 images of folder:{scans}?frame=resize" in result.stdout  # read in the model's framing
    written = rows(out / "p.csv")
    assert [r["image"] for r in written] == [str(scans / f"{i:05d}.png") for i in range(6)]
    assert "true_label" not in written[0]
    assert [int(r["label"]) for r in written] == expected_labels(model_file, images)
    assert sorted(p.name for p in out.iterdir()) == ["p.csv"]  # no submission for a folder, no temp file left

    [run] = mlflow.search_runs(
        experiment_names=["digitflow-predict"],
        output_format="list",
        filter_string="attributes.run_name LIKE 'predict %'",
    )
    assert run.data.params["model.uri"] == str(model_file)
    assert run.data.params["model.frame"] == "resize"
    assert run.data.params["model.metadata"] == "carried by the file"
    assert run.data.metrics["predict/images"] == 6
    assert "predict/accuracy" not in run.data.metrics  # no labels, no accuracy
    assert len(run.data.tags["dataset.input.digest"]) == 64


def test_the_flow_scores_a_kaggle_csv_with_the_registered_champion(tmp_path, model_file, mlflow_store, prefect_server):
    from flows.predict import predict
    from tracking.store import setup_tracking

    setup_tracking("training")  # this test's store, and an experiment in it (not an earlier test's)
    with mlflow.start_run():  # register the file as digitflow run does, and make it the champion
        info = mlflow.pytorch.log_model(
            torch.jit.load(str(model_file)), name="m", serialization_format="pickle", pip_requirements=["torch"]
        )
    version = mlflow.register_model(info.model_uri, "digitflow-lenet").version
    mlflow.MlflowClient().set_registered_model_alias("digitflow-lenet", "champion", version)
    images, labels = fake_digits(12)
    write_kaggle_csv(tmp_path / "train.csv", images, labels)

    summary = predict(input=f"csv:{tmp_path}/train.csv", output=str(tmp_path / "p.csv"), cache_dir=str(tmp_path / "c"))

    assert summary.model == "models:/digitflow-lenet@champion (version 1)"  # the default model
    predicted = expected_labels(model_file, images)
    written = rows(tmp_path / "p.csv")
    assert [r["image"] for r in written] == [str(i) for i in range(1, 13)]
    assert [int(r["label"]) for r in written] == predicted
    assert (tmp_path / "p-submission.csv").read_text().splitlines() == [
        "ImageId,Label",
        *(f"{i},{label}" for i, label in enumerate(predicted, start=1)),
    ]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert summary.report.accuracy == pytest.approx(accuracy)
    run = mlflow.get_run(summary.run_id)
    assert run.data.metrics["predict/accuracy"] == pytest.approx(accuracy)
    assert run.data.params["model.version"] == "1"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "predict needs --input SPEC"),
        (["--input", "csv:{tmp}/none.csv"], "csv:{tmp}/none.csv: no such file"),
        (["--input", "nowhere:test"], "unknown dataset 'nowhere'"),
        (["--input", "folder:{tmp}", "--output", "{tmp}/missing/p.csv"], "no folder {tmp}/missing; create it"),
        (["--input", "folder:{tmp}", "--output", "{tmp}"], "is a folder; give a file name"),
        (["--input", "folder:{tmp}", "--model", "{tmp}/none.pt"], "no model at {tmp}/none.pt (no such file)"),
        (["--input", "folder:{tmp}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_bad_options_are_one_line_before_anything_starts(tmp_path, command, args, expected):
    images, labels = fake_digits(4)
    write_image_folder(tmp_path, images, labels)
    code, _out, err = command("predict", *(a.format(tmp=tmp_path) for a in args))
    assert code == 2
    assert err.startswith("digitflow")
    assert err.count("\n") == 1
    assert expected.format(tmp=tmp_path) in err

"""The target on real data: predictions on the 10,000 MNIST test images from a Kaggle CSV score as the run's
own evaluation of the same model does, image for image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitflow.config import DataConfig, TrainConfig
from digitflow.data import load, load_dataset, prepare
from digitflow.data.framing import model_inputs
from digitflow.data.ids import image_ids
from digitflow.evaluation.classifier import evaluate
from digitflow.export.exporters import export_torchscript
from digitflow.export.metadata import run_metadata
from digitflow.prediction.model import load_scoring_model
from digitflow.prediction.output import write_predictions
from digitflow.prediction.score import predict_dataset
from digitflow.training.classifier import build_model, fit


@pytest.mark.slow
def test_predicting_the_mnist_test_csv_gives_the_runs_own_test_accuracy(tmp_path, shared_data):
    cache = tmp_path / "cache"
    train = load_dataset("mnist:train[:2000]", shared_data, cache, offline=True)
    test = load_dataset("mnist:test", shared_data, cache, offline=True)
    model = build_model(10, seed=0)
    fit(model, *model_inputs(train, "mnist-frame", "cpu"), TrainConfig(epochs=1, batch_size=64, device="cpu"))
    # what the pipeline's evaluate task computes: the trained model on the held-out images, framed for it
    evaluation = evaluate(model, *model_inputs(test, "mnist-frame", "cpu"))
    record = run_metadata(DataConfig(train="mnist:train[:2000]"))
    path = export_torchscript(model, test.images[:1, None].float() / 255, tmp_path / "lenet.pt", metadata=record)

    csv = tmp_path / "test.csv"  # Kaggle's train.csv layout: label, then 784 pixels
    rows = np.column_stack([test.labels.numpy(), test.images.reshape(len(test), -1).numpy()])
    header = ",".join(["label", *(f"pixel{i}" for i in range(784))])
    np.savetxt(csv, rows, fmt="%d", delimiter=",", header=header, comments="")
    prepared = prepare(f"csv:{csv}", "", cache)
    predictions = predict_dataset(load_scoring_model(path), load(prepared), image_ids(prepared))
    write_predictions(predictions, tmp_path / "predictions.csv")

    assert evaluation.accuracy > 0.8  # a trained model: its predictions are not near-ties
    assert predictions.accuracy() == pytest.approx(evaluation.accuracy, abs=1e-12)
    assert torch.equal(predictions.labels, evaluation.predictions)
    assert predictions.ids[:2] == ["1", "2"]

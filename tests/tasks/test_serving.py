"""The registered TorchScript model through MLflow's scoring path, with MLflow's standard REST payload.

``mlflow models serve`` runs the FastAPI app of ``mlflow.pyfunc.scoring_server.init``; the fast test
drives that app in-process, the slow one starts the real command on 127.0.0.1 and scores real MNIST
test images. Both send ``{"inputs": <images as nested lists>}``: JSON numbers, float64 in Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from prefect.logging import disable_run_logger

from digitflow.config import DataConfig, ExportConfig, RunConfig, TrainConfig
from digitflow.data.framing import model_inputs
from tasks.data import download_dataset, load_prepared, prepare_dataset
from tasks.export import export_model
from tasks.train import train_model
from tests.conftest import free_port
from tests.fakedata import fake_data_dir
from tracking.store import setup_tracking

MODEL_URI = "models:/digitflow-lenet@candidate"

pytestmark = [  # what loading a TorchScript model through MLflow says, every time; not ours to fix
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated"),
]


def register(tmp_path: Path, data_dir: Path, train: str, test: str, epochs: int):
    """Train and export through the tasks under a parent run; returns (parent id, export result, images, labels)."""
    config = RunConfig(
        data=DataConfig(
            train=train, test=test, targets=(), data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), offline=True
        ),
        train=TrainConfig(epochs=epochs, batch_size=32, device="cpu"),
        export=ExportConfig(verify_images=16, latency_repeats=1),
        output_dir=str(tmp_path / "out"),
    )
    setup_tracking("serving-test")
    with disable_run_logger(), mlflow.start_run(run_name="pipeline") as parent:
        prepared = {}
        for spec in (train, test):
            files = download_dataset.fn(spec, str(data_dir), offline=True)
            prepared[spec] = prepare_dataset.fn(spec, files, str(data_dir), config.data.cache_dir, parent.info.run_id)
        trained = train_model.fn(prepared[train], config, str(tmp_path / "ck.pt"), parent.info.run_id)
        exported = export_model.fn(trained, prepared[test], config, {"test/accuracy": 0.5}, [], parent.info.run_id)
    images, labels = model_inputs(
        load_prepared(prepared[test], str(data_dir), config.data.cache_dir), "mnist-frame", "cpu"
    )
    return parent.info.run_id, exported, images, labels


def torchscript_logits(exported: dict, images: torch.Tensor) -> np.ndarray:
    """What the exported model itself computes on float32 images: the reference for every served answer."""
    model = torch.jit.load(exported["torchscript_path"], map_location="cpu").eval()
    with torch.inference_mode():
        return model(images).numpy()


def payload(images: torch.Tensor) -> str:
    return json.dumps({"inputs": images.double().tolist()})


def test_registered_model_has_a_signature_and_scores_mlflows_json_payload(tmp_path, monkeypatch, mlflow_store):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    parent_id, exported, images, _ = register(tmp_path, data_dir, "mnist:train", "mnist:test", epochs=1)

    version = mlflow.MlflowClient().get_model_version_by_alias("digitflow-lenet", "candidate")
    assert version.run_id == parent_id  # "Source Run" is the pipeline run, not its export step
    info = mlflow.models.get_model_info(MODEL_URI)
    signature = info.signature
    described = (info.metadata or {}).get("input", "")  # beside the signature, in MLmodel
    assert described.startswith("float images (N, 1, 28, 28), pixels in [0, 1] (bytes / 255)")
    [inputs], [outputs] = signature.inputs.inputs, signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype("float64"), (-1, 1, 28, 28))
    assert outputs.shape == (-1, 10)

    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init() sets it; restored after the test
    model = mlflow.pyfunc.load_model(MODEL_URI)
    client = TestClient(scoring_server.init(model))
    response = client.post("/invocations", content=payload(images), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["predictions"], dtype=np.float32)
    expected = torchscript_logits(exported, images)
    np.testing.assert_array_equal(served, expected)
    # pyfunc in Python, with numpy's default float64: the same answer, no cast by the caller.
    np.testing.assert_array_equal(model.predict(images.double().numpy()), expected)


@pytest.mark.slow
def test_mlflow_models_serve_scores_real_mnist_test_images(tmp_path, shared_data, mlflow_store):
    _parent_id, exported, images, labels = register(
        tmp_path, shared_data, "mnist:test[:2000]", "mnist:test[9800:]", epochs=1
    )
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the environment's mlflow, and the uvicorn it runs
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                "mlflow",
                "models",
                "serve",
                "-m",
                MODEL_URI,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": mlflow_store,
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: uvicorn stops with it
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=payload(images).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.load(response)["predictions"], dtype=np.float32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    expected = torchscript_logits(exported, images)  # another process: thread counts may round differently
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert (served.argmax(axis=1) == expected.argmax(axis=1)).all()
    accuracy = float((served.argmax(axis=1) == labels.numpy()).mean())
    # a model, not noise (chance is 0.1): one epoch on 2,000 images gave 0.77 to above 0.8, by the threads it got
    assert accuracy >= 0.6, f"served predictions on 200 held-out MNIST images: accuracy {accuracy:.3f}"


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer {url} within {timeout:.0f} s")

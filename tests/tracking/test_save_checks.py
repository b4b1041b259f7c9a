"""``tracking.runs.without_save_checks``: MLflow saves a model whole, without the two checks that cannot fail for
ours (reloading it to predict its example; comparing torch== the installed torch with the installed packages)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.models.utils as model_utils
import mlflow.utils.environment as environment
import torch

from tracking.runs import REQUIREMENTS_CHECK, torch_requirement, without_save_checks


def test_the_model_is_saved_whole_without_the_two_checks(mlflow_store, monkeypatch, tmp_path):
    called: list[str] = []
    monkeypatch.setattr(model_utils, "_validate_serving_input", lambda *a, **k: called.append("serving"))
    monkeypatch.setattr(environment, REQUIREMENTS_CHECK, lambda *a: called.append("requirements"))
    checks = (model_utils._validate_serving_input, getattr(environment, REQUIREMENTS_CHECK))
    model, example = torch.nn.Linear(4, 2), torch.rand(2, 4).numpy()
    mlflow.set_experiment("save-checks")
    with mlflow.start_run(), without_save_checks():
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, pip_requirements=[torch_requirement()]
        )
    assert called == []  # neither check ran inside the block
    assert (model_utils._validate_serving_input, getattr(environment, REQUIREMENTS_CHECK)) == checks
    folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path)))
    assert torch_requirement() in (folder / "requirements.txt").read_text()  # saved as before: requirements,
    assert (folder / "input_example.json").is_file()  # the example, the model
    assert torch.allclose(mlflow.pytorch.load_model(info.model_uri)(torch.ones(1, 4)), model(torch.ones(1, 4)))

    with mlflow.start_run():  # outside the block MLflow checks as it always does
        mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=[torch_requirement()])
    assert sorted(called) == ["requirements", "serving"]

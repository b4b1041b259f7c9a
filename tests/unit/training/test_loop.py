"""The shared epoch loop with a step that is not a classifier: what any pluggable step gets for free."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from digitflow.errors import CheckpointError, TrainingDivergedError
from digitflow.training.checkpoint import load_model_state
from digitflow.training.loop import LoopResult, resume_from, run_epochs


class RegressionStep:
    """Least squares on (x, y) pairs with random noise added to every batch (so seeding matters)."""

    name = "Regression"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1) -> None:
        self.x, self.y = x, y
        self.model = torch.nn.Linear(x.shape[1], 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss_sum = torch.zeros(())
        self.batches = 0

    def train(self) -> None:
        self.model.train()

    def reset(self) -> None:
        self.loss_sum.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        x = self.x[idx] + 0.01 * torch.randn_like(self.x[idx])
        loss = torch.nn.functional.mse_loss(self.model(x).squeeze(1), self.y[idx])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * idx.shape[0]
        self.batches += 1

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        return {"loss": float(self.loss_sum) / num_examples, "batches": float(self.batches)}

    def end_epoch(self, metrics: dict[str, float]) -> None:
        metrics["weight_norm"] = float(self.model.weight.detach().norm())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def train(step: RegressionStep, epochs: int, path=None, history=None, **kwargs) -> LoopResult:
    torch.manual_seed(5)  # initial weights
    return run_epochs(
        step,
        step.x.shape[0],
        epochs=epochs,
        batch_size=16,
        seed=1,
        settings={"lr": 0.1, "epochs": epochs},
        checkpoint_path=path,
        history=history,
        **kwargs,
    )


def fresh(xy) -> RegressionStep:
    torch.manual_seed(5)
    return RegressionStep(*xy)


def test_any_step_trains_and_reports_its_own_metrics(xy):
    result = train(fresh(xy), epochs=4)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 10
    assert result.history[0]["batches"] == 7  # 100 examples in batches of 16
    assert {"weight_norm", "seconds", "images_per_sec"} <= set(result.history[0])


def test_resume_continues_any_step_to_the_same_result(xy, tmp_path):
    full = fresh(xy)
    uninterrupted = train(full, epochs=4)

    path = tmp_path / "reg.pt"
    with pytest.raises(_StopError):  # "killed" after epoch 2
        train(fresh(xy), epochs=4, path=path, on_epoch=lambda r: _stop_after(r, 2))
    resumed = fresh(xy)
    history = resume_from(resumed, path, {"lr": 0.1, "epochs": 4})
    assert [r["epoch"] for r in history] == [1, 2]
    result = run_epochs(
        resumed, 100, epochs=4, batch_size=16, seed=1, settings={"lr": 0.1, "epochs": 4}, history=history
    )
    assert result.resumed_from_epoch == 2
    assert torch.equal(resumed.model.weight, full.model.weight)
    assert [r["loss"] for r in result.history] == [r["loss"] for r in uninterrupted.history]


class _StopError(Exception):
    pass


def _stop_after(record: dict, epoch: int) -> None:
    if record["epoch"] == epoch:
        raise _StopError


def test_resume_refuses_another_steps_checkpoint_and_other_settings(xy, tmp_path):
    path = tmp_path / "reg.pt"
    train(fresh(xy), epochs=1, path=path)
    other = fresh(xy)
    other.name = "GAN-dcgan"
    with pytest.raises(CheckpointError, match="'Regression', not 'GAN-dcgan'"):
        resume_from(other, path, {"lr": 0.1, "epochs": 1})
    with pytest.raises(CheckpointError, match="other training settings"):
        resume_from(fresh(xy), path, {"lr": 0.2, "epochs": 1})
    assert resume_from(fresh(xy), tmp_path / "missing.pt", {}) == []


def test_nan_stops_any_step_with_the_epoch_and_batch(xy):
    x, y = xy
    step = RegressionStep(x, y * float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, batch 7/7"):
        train(step, epochs=2)

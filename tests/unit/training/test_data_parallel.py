"""Data-parallel training through the shared loop: each rank's shard of every batch, and two gloo
processes on the CPU training to the same accuracy band as one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn

from digitflow.config import (
    AdaptConfig,
    AdversarialTrainingConfig,
    AugmentConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
)
from digitflow.errors import ConfigError
from digitflow.evaluation.classifier import evaluate
from digitflow.training.classifier import build_model, fit
from digitflow.training.data_parallel import check_data_parallel
from digitflow.training.loop import run_epoch
from tests.conftest import free_port


class RecordingStep:
    """Records the indices each call trains on (no model): what the loop hands a rank."""

    name = "Recording"

    def end_epoch(self, metrics: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"model": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __init__(self) -> None:
        self.loss_sum = torch.zeros(())
        self.calls: list[list[int]] = []

    def train(self) -> None:
        pass

    def reset(self) -> None:
        self.loss_sum.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        self.calls.append(idx.tolist())
        self.loss_sum += idx.shape[0]

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        return {"loss": 0.0, "examples": float(num_examples)}


def test_ranks_split_every_batch_and_run_the_same_number_of_batches():
    steps = [RecordingStep() for _ in range(3)]
    results = [
        run_epoch(step, 20, batch_size=6, generator=torch.Generator().manual_seed(0), shard=(rank, 3))
        for rank, step in enumerate(steps)
    ]
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()[:18]  # 20 - 20 % 3
    assert {len(s.calls) for s in steps} == {3}
    for b in range(3):
        together = sorted(i for s in steps for i in s.calls[b])
        assert together == sorted(order[6 * b : 6 * (b + 1)])  # the global batch, split among the ranks
    assert all(r["examples"] == 18 for r in results)
    # without a shard the loop is what it was: every example, global batches
    alone = RecordingStep()
    run_epoch(alone, 20, batch_size=6, generator=torch.Generator().manual_seed(0))
    assert [len(c) for c in alone.calls] == [6, 6, 6, 2]


def test_settings_data_parallel_cannot_run_are_one_line():
    def config(adapt: AdaptConfig | None = None, **train: Any) -> RunConfig:
        return RunConfig(train=TrainConfig(**train), adapt=adapt or AdaptConfig())

    lbfgs = OptimizerConfig(name="LBFGS")
    check_data_parallel(config(), 2)
    check_data_parallel(config(optimizer=lbfgs), 1)  # one process: anything goes
    cases = [
        (config(optimizer=lbfgs), "LBFGS"),
        (config(batch_size=65), "multiple of --nproc"),
        (config(adversarial=AdversarialTrainingConfig(mode="fgsm-rs")), "--adv-train or --adapt"),
        (config(adapt=AdaptConfig(method="dann", target="usps:test[:1000]")), "--adv-train or --adapt"),
    ]
    for run_config, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            check_data_parallel(run_config, 2)
        assert "\n" not in str(info.value)


def toy_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes told apart by which horizontal band of the image is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = 0.3 * torch.rand(n, 1, 28, 28, generator=g)
    for k in range(10):
        images[labels == k, :, 2 + 2 * k : 4 + 2 * k, :] += 0.7
    return images.clamp(0, 1), labels


CONFIG = TrainConfig(
    epochs=2,
    batch_size=32,
    seed=0,
    amp=False,
    optimizer=OptimizerConfig(kwargs={"lr": 0.05, "momentum": 0.9}),
    augment=AugmentConfig(affine=False),
)


def _rank(rank: int, world: int, port: int, out: str, resume: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    images, labels = toy_digits(512, seed=1)
    model = build_model(10, CONFIG.seed)
    result = fit(model, images, labels, CONFIG, checkpoint_path=f"{out}/ckpt.pt", resume=resume, data_parallel=True)
    saved = {"state": model.state_dict(), "history": result.history, "resumed": result.resumed_from_epoch}
    torch.save(saved, f"{out}/rank{rank}{'-resumed' if resume else ''}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_train_to_the_accuracy_of_one(tmp_path: Path):
    spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    parameters = {name for name, _ in build_model(10, 0).named_parameters()}
    for key in parameters:  # DDP keeps the weights identical (batch-norm statistics are each rank's own)
        torch.testing.assert_close(ranks[0]["state"][key], ranks[1]["state"][key])
    assert ranks[0]["history"][-1]["loss"] == pytest.approx(ranks[1]["history"][-1]["loss"])  # summed over ranks
    assert (tmp_path / "ckpt.pt").is_file()  # written by rank 0

    test_images, test_labels = toy_digits(256, seed=2)
    two = build_model(10, 0)
    two.load_state_dict(ranks[0]["state"])
    one = build_model(10, CONFIG.seed)
    torch.set_num_threads(1)
    fit(one, *toy_digits(512, seed=1), CONFIG)
    accuracy_two = evaluate(two, test_images, test_labels).accuracy
    accuracy_one = evaluate(one, test_images, test_labels).accuracy
    assert accuracy_one > 0.9
    assert abs(accuracy_two - accuracy_one) < 0.05, (accuracy_one, accuracy_two)

    # --resume: every rank loads rank 0's checkpoint; it had both epochs, so nothing is trained again
    spawn(_rank, args=(2, free_port(), str(tmp_path), True), nprocs=2, join=True)
    for r in range(2):
        again = torch.load(tmp_path / f"rank{r}-resumed.pt", weights_only=True)
        assert again["resumed"] == 2
        for key in parameters:
            torch.testing.assert_close(again["state"][key], ranks[0]["state"][key])

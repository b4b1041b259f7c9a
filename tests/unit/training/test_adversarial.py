"""Adversarial training as a step in the one epoch loop: FGSM-RS and PGD batches, the epsilon ramp,
batch-norm statistics untouched by the attack, resume, eager steps, and a robustness gain."""

from __future__ import annotations

import pytest
import torch

from digitflow.config import AdversarialTrainingConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from digitflow.evaluation.attacks import robustness_curve
from digitflow.evaluation.classifier import evaluate
from digitflow.training.adversarial import AdversarialTrainStep, attack_schedule
from digitflow.training.classifier import build_model, fit
from digitflow.training.cuda_graph import graph_unsupported_reason
from digitflow.training.optim import build_optimizer
from tests.unit.training.test_classifier import Interrupted, blocks, same_weights, without_timing

SGD = OptimizerConfig(kwargs={"lr": 0.01, "momentum": 0.9})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return blocks(96, seed=4)


def config(mode: str | None = "fgsm-rs", epochs: int = 2, **adversarial) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=32,
        device="cpu",
        amp=False,
        optimizer=SGD,
        scheduler=SchedulerConfig(name=None),
        adversarial=AdversarialTrainingConfig(mode=mode, **adversarial),  # type: ignore[arg-type]
    )


def test_attack_schedules():
    assert attack_schedule(AdversarialTrainingConfig(mode="fgsm-rs"), 0.2) == pytest.approx((1, 0.25))
    assert attack_schedule(AdversarialTrainingConfig(mode="pgd", steps=5), 0.2) == pytest.approx((5, 0.1))
    assert attack_schedule(AdversarialTrainingConfig(mode="pgd", steps=5, relative_step=0.5), 0.2) == pytest.approx(
        (5, 0.1)
    )


@pytest.mark.parametrize("mode", ["fgsm-rs", "pgd"])
def test_batches_are_attacked_within_epsilon_and_batch_norm_stats_see_one_pass(data, mode):
    images, labels = data
    model = build_model(10, seed=0).train()
    step = AdversarialTrainStep(
        model,
        build_optimizer(model, SGD),
        images,
        labels,
        adversarial=AdversarialTrainingConfig(mode=mode, eps=0.2, steps=3),
    )
    idx = torch.arange(32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = step.inputs(idx)
    assert torch.equal(y, labels[idx])
    assert 0 < (x - images[idx]).abs().max() <= 0.2 + 1e-6
    assert x.min() >= 0
    assert x.max() <= 1
    # the attack's forward passes ran in training mode, yet left the running statistics (and weights) alone
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    step(idx)  # the optimizer step: one forward pass, one update of the running statistics
    batch_norm = model.features[2]
    assert isinstance(batch_norm, torch.nn.BatchNorm2d)
    assert batch_norm.num_batches_tracked is not None
    assert int(batch_norm.num_batches_tracked) == 1


def test_fit_trains_on_adversarial_batches_with_the_epsilon_ramp(data):
    images, labels = data
    model = build_model(10, seed=0)
    result = fit(model, images, labels, config(eps=0.2, ramp_epochs=2, epochs=3))
    assert [h["adv_eps"] for h in result.history] == pytest.approx([0.1, 0.2, 0.2])
    assert result.step == "eager"
    clean = fit(build_model(10, seed=0), images, labels, config(mode=None, epochs=3))
    assert "adv_eps" not in clean.history[0]
    assert clean.history[-1]["loss"] < result.history[-1]["loss"]  # attacked batches are harder


def test_adversarial_training_makes_the_model_more_robust(data):
    images, labels = data
    test_images, test_labels = blocks(60, seed=5)
    models = {}
    for mode in (None, "pgd"):
        models[mode] = build_model(10, seed=0)
        fit(models[mode], images, labels, config(mode=mode, eps=0.3, steps=5, epochs=4))
    curves = {
        mode: robustness_curve(m, test_images, test_labels, (0.0, 0.3), pgd_steps=10) for mode, m in models.items()
    }
    assert evaluate(models["pgd"], test_images, test_labels).accuracy == 1.0
    assert curves["pgd"].at("pgd", 0.3) > curves[None].at("pgd", 0.3) + 0.1  # 0.3 against 0.1 here


def test_resume_reaches_the_uninterrupted_result(data, tmp_path):
    images, labels = data
    cfg = config(mode="pgd", eps=0.2, steps=2, ramp_epochs=1.5, epochs=3)
    straight = build_model(10, seed=0)
    full = fit(straight, images, labels, cfg, checkpoint_path=tmp_path / "a.pt")

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(build_model(10, seed=0), images, labels, cfg, checkpoint_path=tmp_path / "b.pt", on_epoch=stop_after_first)
    resumed_model = build_model(10, seed=7)
    resumed = fit(resumed_model, images, labels, cfg, checkpoint_path=tmp_path / "b.pt", resume=True)
    assert resumed.resumed_from_epoch == 1
    assert without_timing(resumed.history) == without_timing(full.history)  # the ramp continued where it was
    assert same_weights(resumed_model, straight)


def test_adversarial_steps_are_not_captured_as_cuda_graphs():
    reason = graph_unsupported_reason(torch.device("cuda"), "SGD", None, adversarial="pgd")
    assert reason is not None
    assert "adversarial training (pgd)" in reason
    assert graph_unsupported_reason(torch.device("cuda"), "SGD", None) is None


def test_unknown_mode_is_refused(data):
    images, labels = data
    model = build_model(10, seed=0)
    with pytest.raises(ValueError, match="unknown adversarial training mode 'free'"):
        AdversarialTrainStep(
            model,
            build_optimizer(model, SGD),
            images,
            labels,
            adversarial=AdversarialTrainingConfig(mode="free"),  # type: ignore[arg-type]
        )

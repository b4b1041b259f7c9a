"""FGSM and PGD checked, not trusted: perturbations within epsilon and images in [0, 1], PGD never
weaker than FGSM, a constant model unaffected, the model left as it was; the robustness curve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from digitflow.config import OptimizerConfig, SchedulerConfig, TrainConfig
from digitflow.evaluation.attacks import buffers_kept, fgsm, pgd, pgd_survivors, robustness_curve
from digitflow.evaluation.classifier import evaluate
from digitflow.training.classifier import build_model, fit
from tests.unit.training.test_classifier import blocks

EPSILONS = (0.0, 0.05, 0.1, 0.2, 0.3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches; OpenMP threads on a busy machine only wait on each other
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return blocks(96, seed=3)


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:
    """A LeNet that has learned the blocks (clean accuracy 1.0), so attacks have something to break."""
    images, labels = data
    model = build_model(10, seed=0)
    config = TrainConfig(
        epochs=2,
        batch_size=32,
        device="cpu",
        amp=False,
        optimizer=OptimizerConfig(kwargs={"lr": 0.01, "momentum": 0.9}),
        scheduler=SchedulerConfig(name=None),
    )
    fit(model, images, labels, config)
    model.eval()
    assert evaluate(model, images, labels).accuracy == 1.0
    return model


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("eps", EPSILONS)
def test_perturbation_stays_within_epsilon_and_images_in_range(trained, data, attack, eps):
    images, labels = data
    if attack == "fgsm":
        adv = fgsm(trained, images, labels, eps)
    else:
        adv = pgd(trained, images, labels, eps, steps=5, step_size=eps / 2)
    assert adv.shape == images.shape
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0
    assert adv.max() <= 1
    if eps > 0:
        assert (adv != images).any()  # it did attack


def test_pgd_is_never_weaker_than_fgsm(trained, data):
    images, labels = data
    fooled_any = False
    for eps in EPSILONS[1:]:
        fgsm_acc = (trained(fgsm(trained, images, labels, eps)).argmax(1) == labels).float().mean()
        pgd_acc = (trained(pgd(trained, images, labels, eps, steps=10)).argmax(1) == labels).float().mean()
        assert pgd_acc <= fgsm_acc, eps  # the attacks on their own, not only the curve's worst case
        fooled_any |= bool(pgd_acc < 1)
    assert fooled_any  # the test means something: PGD does break the model at some epsilon
    curve = robustness_curve(trained, images, labels, EPSILONS, pgd_steps=10)
    assert all(p <= f for p, f in zip(curve.accuracy["pgd"], curve.accuracy["fgsm"], strict=True))
    assert curve.accuracy["pgd"][-1] < 1


class Constant(nn.Module):
    """Logits that do not depend on the input at all."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.arange(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_a_model_with_constant_output_is_unaffected(data):
    images, labels = data
    model = Constant()
    clean = float((labels == 9).float().mean())
    curve = robustness_curve(model, images, labels, EPSILONS, pgd_steps=3)
    assert curve.accuracy == {"fgsm": [clean] * len(EPSILONS), "pgd": [clean] * len(EPSILONS)}
    assert torch.equal(fgsm(model, images, labels, 0.3), images)  # no gradient, no step


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attacks_leave_mode_weights_statistics_and_gradients_as_they_were(trained, data, mode):
    images, labels = data
    model = build_model(10, seed=1)
    model.load_state_dict(trained.state_dict())
    model.train(mode == "train")
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = state(model)
    fgsm(model, images, labels, 0.1)
    pgd(model, images, labels, 0.1, steps=3)
    assert model.training == (mode == "train")
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running stats, counters
    assert all(p.grad is not None and torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    layouts = [p.is_contiguous() for p in model.parameters()]
    robustness_curve(model, images, labels, (0.0, 0.1), pgd_steps=2)  # on the CPU: attacks a channels-last copy
    assert model.training == (mode == "train")  # attacked in eval mode, handed back as it came
    assert all(torch.equal(before[k], v) for k, v in state(model).items())
    assert [p.is_contiguous() for p in model.parameters()] == layouts  # in its own memory layout too


def test_buffers_kept_undoes_batch_norm_updates_in_training_mode(data):
    images, _ = data
    model = build_model(10, seed=0).train()
    before = state(model)
    with buffers_kept(model):
        model(images)
        batch_norm = model.features[2]
        assert isinstance(batch_norm, nn.BatchNorm2d)
        assert batch_norm.running_mean is not None
        assert not torch.equal(batch_norm.running_mean, before["features.2.running_mean"])
    assert all(torch.equal(before[k], v) for k, v in state(model).items())


def test_robustness_curve_figures(trained, data):
    images, labels = data
    curve = robustness_curve(trained, images, labels, EPSILONS, pgd_steps=4, seed=5, num_examples=6)
    assert curve.num_images == len(labels)
    assert curve.accuracy["fgsm"][0] == curve.accuracy["pgd"][0] == evaluate(trained, images, labels).accuracy
    assert curve.at("pgd", 0.1) == curve.accuracy["pgd"][2]
    names = {(name, step) for name, _, step in curve.metrics()}
    assert names == {(f"robust/{a}/accuracy", s) for a in ("fgsm", "pgd") for s in (0, 5, 10, 20, 30)}
    assert curve.example_images is not None
    assert curve.example_predictions is not None
    assert curve.example_labels is not None
    assert curve.example_images.shape == (len(EPSILONS), 6, 1, 28, 28)
    assert torch.equal(curve.example_images[0], images[:6])  # row 0: the clean images
    assert curve.example_predictions.shape == (len(EPSILONS), 6)
    assert torch.equal(curve.example_labels, labels[:6])
    again = robustness_curve(trained, images, labels, EPSILONS, pgd_steps=4, seed=5, num_examples=6)
    assert again.accuracy == curve.accuracy  # random starts from the seed: the same curve
    only_fgsm = robustness_curve(trained, images, labels, EPSILONS, attacks=("fgsm",))
    assert only_fgsm.accuracy == {"fgsm": curve.accuracy["fgsm"]}
    assert only_fgsm.pgd_alone == []


def test_pgd_survivors_are_the_images_pgd_does_not_break_at_any_point(trained, data):
    images, labels = data
    for eps in (0.05, 0.1, 0.3):
        start = torch.Generator().manual_seed(7)
        held = pgd_survivors(trained, images, labels, eps, steps=5, generator=start)
        final = pgd(trained, images, labels, eps, steps=5, generator=torch.Generator().manual_seed(7))
        right_at_the_end = trained(final).argmax(1) == labels
        # the same random start and steps per image: a survivor is right at PGD's last point too, and
        # an image it drops was broken by some point PGD tried (so at most as many survive)
        assert not (held & ~right_at_the_end).any()
        assert held.sum() <= right_at_the_end.sum()
    assert pgd_survivors(trained, images, labels, 0.0, steps=5).tolist() == [True] * len(labels)


def test_the_curve_only_falls_and_pgd_is_at_least_as_strong_as_each_attack_alone(trained, data):
    images, labels = data
    curve = robustness_curve(trained, images, labels, (0.3, 0.0, 0.1, 0.05), pgd_steps=4, seed=1)
    by_eps = sorted(zip(curve.epsilons, curve.accuracy["pgd"], strict=True))
    assert [a for _, a in by_eps] == sorted((a for _, a in by_eps), reverse=True)
    for i in range(len(curve.epsilons)):
        assert curve.accuracy["pgd"][i] <= min(curve.accuracy["fgsm"][i], curve.pgd_alone[i])
    p = curve.at("pgd", 0.1)
    assert curve.stderr("pgd", 0.1) == pytest.approx((p * (1 - p) / len(labels)) ** 0.5)


def test_bad_attack_arguments():
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least one step"):
        pgd(Constant(), x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        robustness_curve(Constant(), x, y, (0.1,), attacks=("cw",))

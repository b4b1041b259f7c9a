"""Adversarial examples: FGSM and PGD (L-infinity) and the robustness curve of a classifier.

Attacks work in pixel space: images are float ``(N, 1, H, W)`` in [0, 1], as the models take them
(LeNet normalizes its own input), so epsilon is in pixel units (0.1 = a tenth of the white level)
and every adversarial image is clamped back to [0, 1]. ``|x_adv - x| <= eps`` holds for every pixel.

- :func:`fgsm`: one step of size ``eps`` along the sign of the loss gradient (Goodfellow et al. 2015).
- :func:`pgd`: ``steps`` signed-gradient steps of ``step_size``, each projected back into the
  epsilon ball and [0, 1], from a uniform random start in the ball (Madry et al. 2018). With one step
  of ``1.25 * eps`` it is FGSM with random start, the "fast" adversarial training of Wong et al. 2020.
- :func:`robustness_curve`: a model's accuracy under both attacks over a list of epsilons.

An attack leaves the model as it found it: its mode is not touched, gradients are taken with respect
to the input only (``torch.autograd.grad``, so no parameter's ``.grad`` is written), and when the
model is in training mode, whose forward passes update batch-norm running statistics, every buffer
is restored afterwards (:func:`buffers_kept`). An attack on a model in eval mode (evaluation) uses
the running statistics; adversarial training (:mod:`digitflow.training.adversarial`) attacks in training mode,
the function its loss is computed with.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.device import channels_last_helps

Forward = Callable[[torch.Tensor], torch.Tensor]  # images -> logits (the model, possibly under autocast)

ATTACKS = ("fgsm", "pgd")
PGD_STEP_FACTOR = 2.5  # default PGD step size: 2.5 * eps / steps (Madry et al. 2018, appendix)


def default_step_size(eps: float, steps: int) -> float:
    """PGD's step size when none is given: ``2.5 * eps / steps``, enough to cross the ball and back."""
    return PGD_STEP_FACTOR * eps / steps


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` on the way out if it is in training mode, where forward
    passes update batch-norm running statistics (and their counters). In eval mode nothing changes
    buffers, and nothing is copied."""
    if not model.training:
        yield
        return
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def input_gradient(forward: Forward, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy loss with respect to ``images`` only (no parameter's
    ``.grad`` is touched). Summed, not averaged, so an image's gradient does not shrink with the
    batch size (which would underflow in bfloat16)."""
    return gradient_and_logits(forward, images, labels)[0]


def gradient_and_logits(
    forward: Forward, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`input_gradient` and the logits of the forward pass it took (the model's prediction on
    ``images``, for free)."""
    x = images.detach().clone().requires_grad_(True)  # clone: a tensor made under inference mode works too
    with torch.enable_grad():
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        if not loss.requires_grad:  # nothing in the model depends on anything trainable or on x
            return torch.zeros_like(x), logits.detach()
        # allow_unused + materialize_grads: a model that ignores its input has a zero gradient
        (grad,) = torch.autograd.grad(loss, [x], allow_unused=True, materialize_grads=True)
    return grad, logits.detach()


def fgsm(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, forward: Forward | None = None
) -> torch.Tensor:
    """Fast gradient sign method: ``clamp(x + eps * sign(grad), 0, 1)``."""
    if eps == 0:
        return images.detach().clone()
    with buffers_kept(model):
        grad = input_gradient(forward or model, images, labels)
    return (images.detach() + eps * grad.sign()).clamp_(0, 1)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    forward: Forward | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the loss, L-infinity: from a uniform random point of the epsilon
    ball (``random_start``; drawn from ``generator``, else the global RNG), ``steps`` steps of
    ``step_size`` (default :func:`default_step_size`) along the gradient's sign, each projected back
    into the ball around ``images`` and into [0, 1]."""
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got {steps}")
    x = images.detach()
    if eps == 0:
        return x.clone()
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    adv, lower, upper = _start(x, eps, random_start, generator)
    with buffers_kept(model):
        for _ in range(steps):
            grad = input_gradient(forward or model, adv, labels)
            adv = torch.min(torch.max(adv + alpha * grad.sign(), lower), upper)
    return adv


def _start(
    x: torch.Tensor, eps: float, random_start: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD's first point (uniform in the epsilon ball around ``x`` and in [0, 1], or ``x``) and the ball's
    bounds, pixel by pixel."""
    lower, upper = (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)
    if not random_start:
        return x.clone(), lower, upper
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.min(torch.max(x + (2 * noise - 1) * eps, lower), upper), lower, upper


def pgd_survivors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which images PGD (as :func:`pgd`) does not break: a bool mask, False for an image the model
    gets wrong at any point PGD tries (its random start, an iterate, the last one).

    An image is dropped from the batch as soon as one point breaks it, and the attack stops when none
    is left: the rest of its steps could only find more points in the same ball. The prediction at
    each iterate comes with the gradient's forward pass, so checking it costs nothing.
    """
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got {steps}")
    x = images.detach()
    held = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if eps == 0 or x.shape[0] == 0:
        held &= _predict(model, x) == labels
        return held
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    adv, lower, upper = _start(x, eps, random_start, generator)
    active = torch.arange(x.shape[0], device=x.device)  # images no point has broken yet
    with buffers_kept(model):
        for _ in range(steps):
            grad, logits = gradient_and_logits(model, adv, labels[active])
            right = logits.argmax(1) == labels[active]
            held[active[~right]] = False
            active, adv, grad = active[right], adv[right], grad[right]
            if active.numel() == 0:
                return held
            adv = torch.min(torch.max(adv + alpha * grad.sign(), lower[active]), upper[active])
    held[active] &= _predict(model, adv) == labels[active]
    return held


@dataclass
class RobustnessCurve:
    """A model's accuracy under attack, per epsilon, on ``num_images`` images.

    ``accuracy["pgd"]`` counts an image as withstanding PGD only if the model gets it right at every
    point tried in the epsilon ball: clean, FGSM's, each PGD iterate, and the points that broke it at a
    smaller epsilon (they lie in this ball too) - the worst case per image, as robustness evaluations
    report it, so PGD is never weaker than FGSM and the curve never rises. ``pgd_alone`` is PGD's own
    accuracy (its iterates at this and smaller epsilons; on a model without gradient masking the same
    or close: the difference says how often the one-step attack found what PGD missed).
    ``accuracy["fgsm"]`` is FGSM's own, one step per epsilon on every image. ``example_*`` are the
    first images, clean (row 0, epsilon 0) and attacked at each epsilon (by the strongest attack run),
    with the model's predictions.
    """

    epsilons: list[float]
    accuracy: dict[str, list[float]]  # attack name -> accuracy at each epsilon
    num_images: int
    pgd_alone: list[float] = field(default_factory=list)
    example_images: torch.Tensor | None = None  # (len(epsilons), k, 1, H, W) on the CPU
    example_predictions: torch.Tensor | None = None  # (len(epsilons), k)
    example_labels: torch.Tensor | None = None  # (k,)

    def at(self, attack: str, eps: float) -> float:
        """Accuracy under ``attack`` at ``eps`` (one of :attr:`epsilons`)."""
        return self.accuracy[attack][self.epsilons.index(eps)]

    def stderr(self, attack: str, eps: float) -> float:
        """The standard error of :meth:`at` (binomial: ``sqrt(p (1 - p) / n)``), what the figure could
        move by with other images of the same distribution."""
        p = self.at(attack, eps)
        return math.sqrt(p * (1 - p) / self.num_images)

    def metrics(self) -> list[tuple[str, float, int]]:
        """``(name, value, step)`` per attack and epsilon: ``robust/<attack>/accuracy`` with step
        ``round(eps * 100)``, as MLflow logs a curve."""
        return [
            (f"robust/{attack}/accuracy", acc, eps_step(eps))
            for attack, values in self.accuracy.items()
            for eps, acc in zip(self.epsilons, values, strict=True)
        ]


def eps_step(eps: float) -> int:
    """An epsilon as a metric step or key suffix: ``round(eps * 100)`` (0.1 -> 10)."""
    return round(eps * 100)


def robustness_curve(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    *,
    attacks: Sequence[str] = ATTACKS,
    pgd_steps: int = 20,
    pgd_step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 1000,
    num_examples: int = 8,
) -> RobustnessCurve:
    """Accuracy of ``model`` on ``images``/``labels`` under each of ``attacks`` ("fgsm", "pgd") at
    each epsilon (epsilon 0: clean accuracy). The model is attacked in eval mode and handed back in
    the mode it came in; PGD's random starts are drawn from a generator seeded with ``seed``, so the
    same model gives the same curve.

    PGD costs what is left to break: epsilons are taken in increasing order, and PGD attacks only the
    images no point has broken yet (an image misclassified clean or broken at a smaller epsilon is
    broken in every larger ball), dropping each as soon as one iterate breaks it
    (:func:`pgd_survivors`). On a model with little robustness most images fall at the first epsilons.
    """
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
    if images.dim() == 4 and channels_last_helps(images.device, batch_size):
        # oneDNN's NHWC convolutions, as the engine trains: a CPU curve (1,000 images, PGD-10, 7 epsilons) took
        # 7.0 s instead of 11.9 with model and images both channels-last. A copy: the caller's model keeps its layout.
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    n, k = images.shape[0], min(num_examples, images.shape[0])
    order = sorted(range(len(epsilons)), key=lambda i: epsilons[i])  # nested balls: smallest first
    correct = {attack: [0] * len(epsilons) for attack in attacks}
    alone = [0] * len(epsilons)
    try:
        for start in range(0, n, batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            clean_right = _predict(model, x) == y
            held = clean_right.clone()  # right at every point tried so far (all attacks, all smaller epsilons)
            pgd_held = clean_right.clone()  # right at every point PGD tried so far
            for i in order:
                eps = epsilons[i]
                if "fgsm" in attacks:
                    fgsm_right = _predict(model, fgsm(model, x, y, eps)) == y if eps > 0 else clean_right
                    correct["fgsm"][i] += int(fgsm_right.sum())
                    held &= fgsm_right
                if "pgd" in attacks:
                    todo = pgd_held.nonzero().squeeze(1)
                    if eps > 0 and todo.numel():
                        pgd_held[todo] = pgd_survivors(
                            model,
                            x[todo],
                            y[todo],
                            eps,
                            steps=pgd_steps,
                            step_size=pgd_step_size,
                            random_start=random_start,
                            generator=generator,
                        )
                    held &= pgd_held
                    correct["pgd"][i] += int(held.sum())
                    alone[i] += int(pgd_held.sum())
        shown, shown_pred = _examples(
            model, images[:k], labels[:k], epsilons, attacks, pgd_steps, pgd_step_size, random_start, seed
        )
    finally:
        model.train(was_training)
    return RobustnessCurve(
        epsilons=[float(e) for e in epsilons],
        accuracy={attack: [c / n for c in correct[attack]] for attack in attacks},
        num_images=n,
        pgd_alone=[c / n for c in alone] if "pgd" in attacks else [],
        example_images=torch.stack(shown) if k else None,
        example_predictions=torch.stack(shown_pred) if k else None,
        example_labels=labels[:k].detach().cpu().clone() if k else None,
    )


def _examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    attacks: Sequence[str],
    pgd_steps: int,
    pgd_step_size: float | None,
    random_start: bool,
    seed: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The example grid's rows: ``x`` attacked at each epsilon by every attack (a full PGD, as
    :func:`pgd` runs it), each image as the strongest attack left it, and the model's predictions."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    shown, predictions = [], []
    for eps in epsilons:
        adv: dict[str, torch.Tensor] = {}
        if eps > 0 and "fgsm" in attacks:
            adv["fgsm"] = fgsm(model, x, y, eps)
        if eps > 0 and "pgd" in attacks:
            adv["pgd"] = pgd(
                model,
                x,
                y,
                eps,
                steps=pgd_steps,
                step_size=pgd_step_size,
                random_start=random_start,
                generator=generator,
            )
        raw = {attack: (_predict(model, adv[attack]) == y) if attack in adv else y == y for attack in attacks}
        image, prediction = _strongest(model, x, adv, raw, attacks, x.shape[0])
        shown.append(image)
        predictions.append(prediction)
    return shown, predictions


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    predictions: torch.Tensor = model(images).argmax(1)
    return predictions


def _strongest(
    model: nn.Module,
    clean: torch.Tensor,
    adv: dict[str, torch.Tensor],
    raw: dict[str, torch.Tensor],
    attacks: Sequence[str],
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` images as the strongest attack left them, with the model's predictions: the
    last of ``attacks`` (PGD), or, for an image only an earlier attack fooled, that attack's image;
    the clean images at epsilon 0."""
    last = attacks[-1]
    chosen = adv[last][:k] if last in adv else clean
    for attack in attacks[:-1]:
        if attack in adv:
            only_this = (~raw[attack][:k] & raw[last][:k]).view(-1, 1, 1, 1)
            chosen = torch.where(only_this, adv[attack][:k], chosen)
    return chosen.detach().cpu().clone(), _predict(model, chosen).cpu()

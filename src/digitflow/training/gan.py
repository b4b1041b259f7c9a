"""GAN training on digit images: :class:`GanStep` (one discriminator step, then one generator step,
per batch) plugged into the shared epoch loop (:mod:`digitflow.training.loop`: seeding, checkpoints, resume,
NaN stop, progress), :func:`fit_gan` to run it, and what measures the result: :class:`GeneratorJudge`
(FID against held-out real images, with its floor, and the judge's class histogram) and
:func:`collapse_reasons` (mode collapse, detected from the figures).

Images come in as the rest of the project has them, float (N, 1, 28, 28) in [0, 1], and are trained
on in [-1, 1], the generator's tanh range; :func:`generate` hands samples back in [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from digitflow.config import GAN_LOSSES, FeatureLayer, GanEvalConfig, GanTrainConfig, OptimizerConfig, to_dict
from digitflow.device import bf16_autocast_helps
from digitflow.errors import CheckpointError, ConfigError
from digitflow.evaluation.generative import (
    FeatureStats,
    class_metrics,
    feature_statistics,
    frechet_distance,
    judge_outputs,
)
from digitflow.models.gan import ARCHITECTURES, SampleDigits, build_gan
from digitflow.training.checkpoint import load_model_state
from digitflow.training.loop import BatchCallback, EpochCallback, resume_from, run_epochs
from digitflow.training.optim import build_optimizer

if TYPE_CHECKING:
    from digitflow.models import LeNet

Evaluator = Callable[[nn.Module], dict[str, float]]


def build_models(config: GanTrainConfig) -> tuple[nn.Module, nn.Module]:
    """A fresh (generator, discriminator) pair for ``config.arch``, initialised from ``config.seed``."""
    if config.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown GAN architecture {config.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if config.latent_dim < 1:
        raise ConfigError(f"the latent size must be at least 1, got {config.latent_dim}")
    if config.width < 1:
        raise ConfigError(f"the DCGAN width must be at least 1, got {config.width}")
    if config.loss not in GAN_LOSSES:
        raise ConfigError(f"unknown GAN loss {config.loss!r}; choose one of: {', '.join(GAN_LOSSES)}")
    if config.loss == "hinge" and config.real_label != 1:
        raise ConfigError(
            f"a real label of {config.real_label} is label smoothing, for the bce loss; the hinge loss has no labels"
        )
    if config.spectral_norm and config.arch != "dcgan":
        raise ConfigError("spectral normalisation is for the DCGAN discriminator (arch dcgan)")
    torch.manual_seed(config.seed)
    return build_gan(config.arch, config.latent_dim, config.width, config.spectral_norm)


def optimizer_for(
    module: nn.Module, config: OptimizerConfig, others: Sequence[nn.Module] = (), device: torch.device | None = None
) -> torch.optim.Optimizer:
    """``config``'s optimizer for one of the GAN's networks. Both networks share the optimizer options;
    a parameter group (``--param-group PREFIX:KEY=VALUE``) applies to the network(s) with parameters
    under its prefix, and one that matches no parameter of any network (``others``) is a ConfigError."""
    names = [n for n, _ in module.named_parameters()]
    other_names = [n for m in others for n, _ in m.named_parameters()]
    groups = {}
    for prefix, options in config.param_groups.items():
        if any(n.startswith(prefix) for n in names):
            groups[prefix] = options
        elif not any(n.startswith(prefix) for n in other_names):
            tops = sorted({n.split(".")[0] for n in names + other_names})
            raise ConfigError(
                f"parameter group {prefix!r} matches no parameter of the GAN; top-level names are: {', '.join(tops)}"
            )
    return build_optimizer(module, dataclasses.replace(config, param_groups=groups), device=device)


def bce_floor(real_label: float) -> float:
    """The smallest discriminator loss possible with targets ``real_label`` (real) and 0 (fake): the
    entropy of the real target (0 without label smoothing, 0.325 nats at 0.9)."""
    p = real_label
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


class GanStep:
    """One GAN training step on the real images ``images[idx]`` (a :class:`digitflow.training.step.Step`).

    Discriminator: binary cross-entropy on the real batch (target ``real_label``: one-sided label
    smoothing below 1) plus on a batch generated from fresh noise and detached, one optimizer step.
    Generator: the same generated batch through the updated discriminator, target 1 (the
    non-saturating loss), one optimizer step. With ``ema_decay`` > 0 an exponential moving average of
    the generator's weights is kept after every step (``ema``); samples and evaluations use it.

    Running sums stay on the device: ``loss_sum`` (discriminator + generator loss, the figure the
    loop watches for NaN), the two losses, mean D(x) and D(G(z)), and the epoch's largest
    discriminator loss (``d_loss_max``: when even that is near the loss's floor, the discriminator
    won the whole epoch, a sign of collapse).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        images: torch.Tensor,
        config: GanTrainConfig,
        *,
        evaluate: Evaluator | None = None,
        eval_every: int = 1,
    ) -> None:
        self.name = f"GAN-{config.arch}"
        self.generator, self.discriminator = generator, discriminator
        self.opt_g, self.opt_d = opt_g, opt_d
        self.real = images * 2 - 1  # (N, 1, 28, 28) in [-1, 1], the generator's tanh range
        self.latent_dim = config.latent_dim
        self.real_label = config.real_label
        self.loss = config.loss
        self.ema_decay = config.ema_decay
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False) if config.ema_decay > 0 else None
        self.ema_steps = 0  # updates of the average so far (its warm-up depends on it)
        self.evaluate, self.eval_every, self.epochs = evaluate, max(1, eval_every), config.epochs
        self.epoch = 0  # epochs completed; set from the checkpoint on resume
        device = images.device
        self.use_amp = config.amp and bf16_autocast_helps(device)
        self.loss_sum = torch.zeros((), device=device)
        self.sums = torch.zeros(4, device=device)  # d_loss, g_loss, D(x), D(G(z)) summed over images
        self.d_loss_max = torch.zeros((), device=device)

    @property
    def sampler(self) -> nn.Module:
        """The generator to sample from: the moving average when there is one."""
        return self.ema if self.ema is not None else self.generator

    def train(self) -> None:
        self.generator.train()
        self.discriminator.train()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.sums.zero_()
        self.d_loss_max.fill_(-math.inf)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.real.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def __call__(self, idx: torch.Tensor) -> None:
        real = self.real[idx]  # (B, 1, 28, 28)
        b = real.shape[0]
        z = torch.randn(b, self.latent_dim, device=real.device)  # (B, latent_dim)
        with self._autocast():
            fake = self.generator(z)  # (B, 1, 28, 28)
            real_logits = self.discriminator(real).float()  # (B, 1)
            fake_logits = self.discriminator(fake.detach()).float()
        if self.loss == "hinge":  # real logits pushed above 1, fake below -1
            d_loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        else:
            d_loss = F.binary_cross_entropy_with_logits(
                real_logits, torch.full_like(real_logits, self.real_label)
            ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        with self._autocast():
            g_logits = self.discriminator(fake).float()
        if self.loss == "hinge":
            g_loss = -g_logits.mean()
        else:
            g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.ema is not None:
            self._update_ema()

        d_loss, g_loss = d_loss.detach(), g_loss.detach()
        self.loss_sum += (d_loss + g_loss) * b
        batch = torch.stack(
            [d_loss, g_loss, torch.sigmoid(real_logits.detach()).mean(), torch.sigmoid(fake_logits.detach()).mean()]
        )
        self.sums += batch * b
        torch.maximum(self.d_loss_max, d_loss, out=self.d_loss_max)

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None
        ema_params: list[torch.Tensor] = list(self.ema.parameters())
        params: list[torch.Tensor] = list(self.generator.parameters())
        # warm-up: early on the average follows closely, so the first epochs' samples are not dragged
        # back to the random initial weights (0.999 alone would need thousands of steps to forget them)
        decay = min(self.ema_decay, (1 + self.ema_steps) / (10 + self.ema_steps))
        self.ema_steps += 1
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            ema_buffer.copy_(buffer)  # batch-norm statistics: the current ones

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        """``loss`` (discriminator + generator), ``d_loss``, ``g_loss``, ``d_real`` (mean D(x)),
        ``d_fake`` (mean D(G(z)) before the discriminator's step), ``d_loss_max`` (the epoch's largest
        batch discriminator loss) and ``d_loss_floor`` (the smallest it can be)."""
        d_loss, g_loss, d_real, d_fake = (float(v) / num_examples for v in self.sums.cpu())
        return {
            "loss": float(self.loss_sum) / num_examples,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": d_real,
            "d_fake": d_fake,
            "d_loss_max": float(self.d_loss_max),
            "d_loss_floor": bce_floor(self.real_label) if self.loss == "bce" else 0.0,
        }

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """Count the epoch; every ``eval_every`` epochs and after the last, add the evaluator's figures
        (FID, coverage, ...) to ``metrics``, so they are part of the history a checkpoint keeps."""
        self.epoch += 1
        if self.evaluate is not None and (self.epoch % self.eval_every == 0 or self.epoch == self.epochs):
            metrics.update(self.evaluate(self.sampler))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_steps": self.ema_steps,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.generator, state["model"])
        load_model_state(self.discriminator, state["discriminator"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError("the checkpoint has no moving-average generator")
            load_model_state(self.ema, state["ema"])
            self.ema_steps = int(state.get("ema_steps", 0))
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.epoch = int(state["epoch"])


@dataclass
class GanResult:
    """What :func:`fit_gan` hands back."""

    generator: nn.Module  # the one to sample from (the moving average when there is one), eval mode
    discriminator: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, "epoch" key 1-based
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0
    trained_generator: nn.Module | None = None  # the generator the optimizer trained (== generator without EMA)


def resumable_settings(config: GanTrainConfig) -> dict[str, Any]:
    """What a resumed GAN run must share with its checkpoint: the training config but the device."""
    settings = to_dict(config)
    settings.pop("device")
    return settings


def build_step(
    images: torch.Tensor, config: GanTrainConfig, *, evaluate: Evaluator | None = None, eval_every: int = 1
) -> GanStep:
    """A :class:`GanStep` with fresh networks (``config.arch``, seeded from ``config.seed``) and their
    optimizers, on the device of ``images`` (N, 1, 28, 28) in [0, 1]."""
    device = images.device
    generator, discriminator = (m.to(device) for m in build_models(config))
    opt_g = optimizer_for(generator, config.optimizer, [discriminator], device=device)
    opt_d = optimizer_for(discriminator, config.optimizer, [generator], device=device)
    return GanStep(generator, discriminator, opt_g, opt_d, images, config, evaluate=evaluate, eval_every=eval_every)


def fit_gan(
    images: torch.Tensor,
    config: GanTrainConfig,
    *,
    evaluate: Evaluator | None = None,
    eval_every: int = 1,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    step: GanStep | None = None,
) -> GanResult:
    """Train a GAN (``config.arch``) on ``images`` (N, 1, 28, 28) in [0, 1], on their device, for
    ``config.epochs`` epochs in the shared loop (:func:`digitflow.training.loop.run_epochs`).

    ``evaluate(generator)`` (e.g. a :class:`GeneratorJudge`) runs every ``eval_every`` epochs and after
    the last; its figures join the epoch's record. A checkpoint (both networks, the moving average, both
    optimizers, settings, history) is written after every epoch; ``resume=True`` continues from it to
    the same result, and refuses a checkpoint of another step (the classifier's, another architecture's).
    ``step`` is one from :func:`build_step` the caller wants to watch (``step.sampler`` in ``on_epoch``,
    to draw samples every epoch); by default one is built here.
    """
    step = step or build_step(images, config, evaluate=evaluate, eval_every=eval_every)
    generator, discriminator = step.generator, step.discriminator
    settings = resumable_settings(config)
    history = resume_from(step, checkpoint_path, settings) if resume else []
    result = run_epochs(
        step,
        images.shape[0],
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        settings=settings,
        checkpoint_path=checkpoint_path,
        history=history,
        on_batch=on_batch,
        on_epoch=on_epoch,
    )
    generator.eval()
    discriminator.eval()
    return GanResult(
        generator=step.sampler.eval(),
        discriminator=discriminator,
        history=result.history,
        checkpoint=result.checkpoint,
        resumed_from_epoch=result.resumed_from_epoch,
        trained_generator=generator,
    )


def fixed_noise(n: int, latent_dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` noise vectors (n, latent_dim) that depend only on ``seed``, not on the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, latent_dim, generator=generator).to(device)


@torch.inference_mode()
def generate(generator: nn.Module, noise: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Images (N, 1, 28, 28) in [0, 1] from ``noise`` (N, latent_dim), with the generator in eval mode
    (batch norm on its running statistics); the generator's mode is restored afterwards."""
    was_training = generator.training
    generator.eval()
    try:
        out = [generator(noise[i : i + batch_size]).float() for i in range(0, noise.shape[0], batch_size)]
    finally:
        generator.train(was_training)
    return ((torch.cat(out) + 1) * 0.5).clamp(0, 1)


def image_grid(images: torch.Tensor, columns: int = 10, padding: int = 2) -> torch.Tensor:
    """Images (N, 1, H, W) in [0, 1] tiled into one (rows*(H+p)+p, columns*(W+p)+p) float image, a
    ``padding``-pixel dark border around each; empty cells of the last row stay dark."""
    n, _, h, w = images.shape
    rows = max(1, math.ceil(n / columns))
    grid = torch.zeros(rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = images[i, 0].detach().float().cpu()
    return grid


def exportable_generator(generator: nn.Module, latent_dim: int) -> SampleDigits:
    """An eval-mode CPU copy of ``generator`` wrapped to take noise (N, latent_dim) and give images in
    [0, 1]: what the export writes and what the exported file computes."""
    return SampleDigits(copy.deepcopy(generator).cpu().eval(), latent_dim).eval()


class GeneratorJudge:
    """Judges a generator with a trained classifier (``judge``): an evaluator for :func:`fit_gan`.

    ``reference`` are held-out real images, ``floor_images`` other real images (training images, none
    of them in ``reference``), both (N, 1, 28, 28) in [0, 1]; the first ``config.num_images`` of each
    are used. Calling it with a generator returns ``gan/fid`` (generated vs reference), ``gan/fid_floor``
    (floor images vs reference: what two real sets of the same size score, so FID has its yardstick
    beside it), ``gan/fid_ratio``, and the judge's ``gan/coverage``, ``gan/entropy`` and
    ``gan/confidence`` on the generated images. The noise is the same at every call (``seed``), so two
    epochs are compared on the same draws.
    """

    def __init__(
        self,
        judge: LeNet,
        reference: torch.Tensor,
        floor_images: torch.Tensor,
        latent_dim: int,
        config: GanEvalConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        config = config or GanEvalConfig()
        self.judge, self.config = judge.eval(), config
        self.layer: FeatureLayer = config.feature_layer
        n = min(config.num_images, reference.shape[0], floor_images.shape[0])
        if n < 2:
            raise ConfigError(
                f"FID needs at least 2 real images in each set; got {reference.shape[0]} held-out and "
                f"{floor_images.shape[0]} training images"
            )
        self.num_images = n
        device = judge.mean.device
        self.reference: FeatureStats = feature_statistics(judge_outputs(judge, reference[:n], layer=self.layer)[0])
        self.floor = frechet_distance(
            feature_statistics(judge_outputs(judge, floor_images[:n], layer=self.layer)[0]), self.reference
        )
        self.noise = fixed_noise(n, latent_dim, seed + 7919, device)  # not the training noise stream

    def __call__(self, generator: nn.Module) -> dict[str, float]:
        images = generate(generator, self.noise.to(next(generator.parameters()).device))
        return self.measure(images)

    def measure(self, images: torch.Tensor) -> dict[str, float]:
        """The figures for ``images`` (N, 1, 28, 28) in [0, 1] (generated, or anything else to judge)."""
        features, probabilities = judge_outputs(self.judge, images, layer=self.layer)
        fid = frechet_distance(feature_statistics(features), self.reference)
        figures = class_metrics(probabilities, min_share=self.config.min_class_share)
        return {
            "gan/fid": fid,
            "gan/fid_floor": self.floor,
            "gan/fid_ratio": fid / self.floor if self.floor > 0 else math.inf,
            **{f"gan/{k}": v for k, v in figures.items()},
        }


def collapse_reasons(history: list[dict[str, float]], config: GanEvalConfig | None = None) -> list[str]:
    """Why a run counts as mode-collapsed, one short phrase per reason (empty: it did not).

    * the last evaluation's coverage under ``config.collapse_coverage`` classes (earlier evaluations
      are not held against a run: its first epochs' blobs cover few classes on the way to digits);
    * an epoch in which even the largest batch discriminator loss stayed within
      ``config.collapse_d_loss`` of its floor: the discriminator won every batch of it.
    """
    config = config or GanEvalConfig()
    reasons = []
    evaluated = [h for h in history if "gan/coverage" in h]
    if evaluated and evaluated[-1]["gan/coverage"] < config.collapse_coverage:
        last = evaluated[-1]
        reasons.append(
            f"coverage {last['gan/coverage']:.0f}/10 after epoch {last['epoch']:.0f} (under {config.collapse_coverage})"
        )
    pinned = [h for h in history if h.get("d_loss_max", math.inf) - h.get("d_loss_floor", 0.0) < config.collapse_d_loss]
    if pinned:
        epochs = ", ".join(f"{h['epoch']:.0f}" for h in pinned[:5]) + (", ..." if len(pinned) > 5 else "")
        reasons.append(f"discriminator loss pinned near its minimum for whole epochs ({epochs})")
    return reasons

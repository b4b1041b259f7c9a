"""The GAN models and step: shapes and ranges, training on tiny data through the shared loop, resume,
collapse detection, export of the generator."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from digitflow.config import GanEvalConfig, TrainConfig, gan_train_defaults
from digitflow.errors import CheckpointError, ConfigError
from digitflow.export.exporters import export_program, export_torchscript, load_export, verify_export
from digitflow.models import LeNet
from digitflow.models.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, build_gan
from digitflow.training.classifier import fit
from digitflow.training.gan import (
    GeneratorJudge,
    bce_floor,
    build_models,
    build_step,
    collapse_reasons,
    exportable_generator,
    fit_gan,
    fixed_noise,
    generate,
    image_grid,
)
from tests.fakedata import fake_digits


def tiny_config(arch: str, **changes):
    small = {"epochs": 2, "batch_size": 16, "device": "cpu", "latent_dim": 16, "width": 8}
    return dataclasses.replace(gan_train_defaults(arch), **{**small, **changes})


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fake_digits(64, seed=3)
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels)


@pytest.mark.parametrize(
    ("generator", "discriminator"),
    [(MLPGenerator(100), MLPDiscriminator()), (DCGANGenerator(100, 16), DCGANDiscriminator(16))],
    ids=["mlp", "dcgan"],
)
def test_shapes_and_output_ranges(generator, discriminator):
    torch.manual_seed(0)
    z = torch.randn(5, 100) * 10  # large noise: the tanh output must still stay in [-1, 1]
    images = generator(z)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= -1
    assert images.max() <= 1
    logits = discriminator(images)
    assert logits.shape == (5, 1)
    assert torch.isfinite(logits).all()


def test_the_mlp_is_the_notes_architecture():
    generator, discriminator = build_gan("mlp")
    sizes = [(m.in_features, m.out_features) for m in generator.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    sizes = [(m.in_features, m.out_features) for m in discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    assert [m.p for m in discriminator.modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3, 0.3]


def test_unknown_architecture_and_bad_sizes_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown GAN architecture 'vae'; choose one of: mlp, dcgan"):
        build_models(dataclasses.replace(gan_train_defaults("dcgan"), arch="vae"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="latent size must be at least 1"):
        build_models(dataclasses.replace(gan_train_defaults("dcgan"), latent_dim=0))
    with pytest.raises(ConfigError, match="unknown GAN loss 'wgan'; choose one of: bce, hinge"):
        build_models(dataclasses.replace(gan_train_defaults("dcgan"), loss="wgan"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="label smoothing, for the bce loss; the hinge loss has no labels"):
        build_models(dataclasses.replace(gan_train_defaults("dcgan"), loss="hinge", real_label=0.9))
    with pytest.raises(ConfigError, match="spectral normalisation is for the DCGAN discriminator"):
        build_models(dataclasses.replace(gan_train_defaults("mlp"), spectral_norm=True))


def test_spectral_norm_keeps_each_discriminator_layer_near_norm_one():
    torch.manual_seed(0)
    _, discriminator = build_gan("dcgan", 16, 8, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules())
    layers = [m for m in discriminator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 3
    discriminator.train()
    for _ in range(30):  # each training forward runs one power iteration
        discriminator(torch.rand(4, 1, 28, 28) * 2 - 1)
    for layer in layers:
        weight = layer.weight.flatten(1)  # the normalised weight; a conv's as (out, in*k*k), as spectral_norm sees it
        assert float(torch.linalg.matrix_norm(weight, ord=2)) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("arch", "changes"),
    [("mlp", {}), ("dcgan", {}), ("dcgan", {"loss": "bce", "spectral_norm": False, "real_label": 0.9})],
    ids=["mlp", "dcgan", "dcgan-bce-batchnorm"],
)
def test_a_few_steps_move_d_real_up_and_change_the_generator_loss(arch, changes, digits):
    images, _ = digits
    config = tiny_config(arch, epochs=3, **changes)
    step = build_step(images, config)

    def d_real() -> float:  # mean D(x) on the real images (batch statistics, as in training; dropout seeded)
        torch.manual_seed(1)
        step.discriminator.train()
        with torch.no_grad():
            return float(torch.sigmoid(step.discriminator(images * 2 - 1)).mean())

    before = d_real()
    result = fit_gan(images, config, step=step)
    assert d_real() > before + 0.05
    first, last = result.history[0], result.history[-1]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "seconds"} <= set(first)
    assert last["g_loss"] != pytest.approx(first["g_loss"], rel=1e-3)
    assert not result.generator.training


def _adam(lr: float):
    from digitflow.config import OptimizerConfig

    return OptimizerConfig(name="Adam", kwargs={"lr": lr, "betas": [0.5, 0.999]})


def test_resume_continues_to_the_same_result(digits, tmp_path):
    images, _ = digits
    config = tiny_config("dcgan", epochs=3, ema_decay=0.9)
    full = fit_gan(images, config)

    path = tmp_path / "gan.pt"

    class StopError(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise StopError

    with pytest.raises(StopError):
        fit_gan(images, config, checkpoint_path=path, on_epoch=stop_after_two)
    resumed = fit_gan(images, config, checkpoint_path=path, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert [h["g_loss"] for h in resumed.history] == [h["g_loss"] for h in full.history]
    for a, b in zip(resumed.generator.state_dict().values(), full.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_classifier_checkpoint_and_another_architecture(digits, tmp_path):
    images, labels = digits
    lenet_checkpoint = tmp_path / "lenet.pt"
    fit(
        LeNet(),
        images,
        labels,
        TrainConfig(epochs=1, device="cpu", augment=dataclasses.replace(TrainConfig().augment, affine=False)),
        checkpoint_path=lenet_checkpoint,
    )
    with pytest.raises(CheckpointError, match="was written for model 'LeNet', not 'GAN-dcgan'"):
        fit_gan(images, tiny_config("dcgan"), checkpoint_path=lenet_checkpoint, resume=True)
    gan_checkpoint = tmp_path / "mlp.pt"
    fit_gan(images, tiny_config("mlp", epochs=1), checkpoint_path=gan_checkpoint)
    with pytest.raises(CheckpointError, match="'GAN-mlp', not 'GAN-dcgan'"):
        fit_gan(images, tiny_config("dcgan"), checkpoint_path=gan_checkpoint, resume=True)


class OneImage(torch.nn.Module):
    """A collapsed generator: the same image whatever the noise."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = torch.nn.Parameter(image * 2 - 1)  # stored in [-1, 1], as a generator outputs

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image.expand(z.shape[0], -1, -1, -1) + 0 * z[:, :1, None, None]


def test_collapse_is_detected_on_a_generator_that_outputs_one_image(digits):
    images, labels = digits
    torch.manual_seed(0)
    judge = LeNet()
    fit(
        judge,
        images,
        labels,
        TrainConfig(epochs=3, device="cpu", augment=dataclasses.replace(TrainConfig().augment, affine=False)),
    )
    config = GanEvalConfig(num_images=32)
    judged = GeneratorJudge(judge, images[32:], images[:32], latent_dim=16, config=config)
    figures = judged(OneImage(images[0]))
    assert figures["gan/coverage"] == 1
    assert figures["gan/entropy"] == pytest.approx(0.0)
    assert figures["gan/fid"] > figures["gan/fid_floor"]
    history = [{"epoch": 1, "d_loss_max": 1.0, "d_loss_floor": 0.0, **figures}]
    reasons = collapse_reasons(history, config)
    assert len(reasons) == 1
    assert reasons[0].startswith("coverage 1/10 after epoch 1")
    # real images judged as generated ones: all classes covered, FID near the floor, no collapse
    real = judged.measure(images[:32])
    assert real["gan/coverage"] >= 8
    assert collapse_reasons([{"epoch": 1, "d_loss_max": 1.0, "d_loss_floor": 0.0, **real}], config) == []


def test_a_discriminator_that_wins_a_whole_epoch_is_collapse():
    floor = bce_floor(0.9)
    assert floor == pytest.approx(0.325, abs=1e-3)
    won = {"epoch": 4, "d_loss_max": floor + 0.01, "d_loss_floor": floor}
    fighting = {"epoch": 3, "d_loss_max": floor + 0.6, "d_loss_floor": floor}
    assert collapse_reasons([fighting]) == []
    assert collapse_reasons([fighting, won]) == ["discriminator loss pinned near its minimum for whole epochs (4)"]


def test_samples_grid_and_fixed_noise():
    noise = fixed_noise(12, 16, seed=3)
    assert torch.equal(noise, fixed_noise(12, 16, seed=3))
    torch.manual_seed(0)
    generator = DCGANGenerator(16, 8)
    samples = generate(generator, noise)
    assert samples.shape == (12, 1, 28, 28)
    assert samples.min() >= 0
    assert samples.max() <= 1
    assert generator.training  # mode restored
    assert image_grid(samples, columns=10).shape == (2 * 30 + 2, 10 * 30 + 2)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_exported_generator_gives_the_same_images_without_this_project(arch, tmp_path):
    torch.manual_seed(0)
    generator, _ = build_gan(arch, latent_dim=16, width=8)
    model = exportable_generator(generator, 16)
    noise = fixed_noise(8, 16, seed=1)
    with torch.inference_mode():
        reference = model(noise)
    assert reference.shape == (8, 1, 28, 28)
    assert 0 <= float(reference.min()) <= float(reference.max()) <= 1
    for path in (
        export_torchscript(model, noise[:1], tmp_path / "g.pt"),
        export_program(model, noise[:1], tmp_path / "g.pt2"),
    ):
        check = verify_export(path, noise, reference, predictions=False)
        assert check["max_abs_diff"] <= 1e-5
        loaded = load_export(path)
        with pytest.raises(Exception, match=r"\(N, 16\)|shape|16"):  # a latent size it cannot take
            loaded(torch.randn(2, 100))

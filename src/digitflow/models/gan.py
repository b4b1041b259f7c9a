"""GAN models for 28x28 grayscale digits: an MLP pair (the PyTorch study notes' GAN) and a DCGAN pair.

Generators map noise ``z`` (N, latent_dim) to images (N, 1, 28, 28) in [-1, 1] (tanh output), the
range the discriminators are trained on. Discriminators map such images to one logit per image,
(N, 1): the probability that an image is real is ``sigmoid(logit)``. They return the logit rather
than the probability because ``binary_cross_entropy_with_logits`` is the same loss as sigmoid + BCE
computed stably (no log(0) when the discriminator is sure), which is what lets a long run not end
in NaN; :func:`torch.sigmoid` of the output is the "sigmoid output" of the notes.

:class:`SampleDigits` wraps a generator for export: noise in, images in [0, 1] out, the range the
classifier (LeNet) and the rest of the project use.
"""

import torch
from torch import nn

IMAGE_SIZE = 28


class MLPGenerator(nn.Module):
    """fc z(latent_dim)->256->512->1024->784, LeakyReLU 0.2, tanh: (N, latent_dim) -> (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 256),  # (N, 256)
            nn.LeakyReLU(0.2),
            nn.Linear(256, 512),  # (N, 512)
            nn.LeakyReLU(0.2),
            nn.Linear(512, 1024),  # (N, 1024)
            nn.LeakyReLU(0.2),
            nn.Linear(1024, IMAGE_SIZE * IMAGE_SIZE),  # (N, 784)
            nn.Tanh(),
            nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE)),  # (N, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.net(z)
        return images


class MLPDiscriminator(nn.Module):
    """fc 784->1024->512->256->1, LeakyReLU 0.2, dropout 0.3: (N, 1, 28, 28) -> (N, 1) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (N, 784)
            nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 1024),  # (N, 1024)
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(1024, 512),  # (N, 512)
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(512, 256),  # (N, 256)
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(256, 1),  # (N, 1) logit; sigmoid(logit) = P(real)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits


class DCGANGenerator(nn.Module):
    """fc z -> (2w, 7, 7), BatchNorm, ReLU; transposed conv 2w->w 4x4 stride 2 -> 14x14, BatchNorm, ReLU;
    transposed conv w->1 4x4 stride 2 -> 28x28, tanh. ``width`` w = 64 by default."""

    def __init__(self, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * 7 * 7, bias=False),  # (N, 2w*49)
            nn.Unflatten(1, (2 * width, 7, 7)),  # (N, 2w, 7, 7)
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False),  # (N, w, 14, 14)
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28)
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.upsample(self.project(z))
        return images


class DCGANDiscriminator(nn.Module):
    """conv 1->w 4x4 stride 2 -> 14x14, LeakyReLU 0.2; conv w->2w 4x4 stride 2 -> 7x7, BatchNorm,
    LeakyReLU 0.2; fc -> 1 logit. (N, 1, 28, 28) -> (N, 1)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),  # (N, w, 14, 14)
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),  # (N, 2w, 7, 7)
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),  # (N, 2w*49)
            nn.Linear(2 * width * 7 * 7, 1),  # (N, 1) logit
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0.

    Apply with ``model.apply(dcgan_init)``. It keeps the early discriminator from saturating, which
    the default (Kaiming uniform) init does more often at the Adam settings DCGANs use.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class SampleDigits(nn.Module):
    """A generator for export: noise (N, latent_dim) float -> images (N, 1, 28, 28) in [0, 1].

    The latent size is checked with a one-line error (a wrong size would otherwise fail deep inside
    the first layer with a matrix-shape message), and the input is cast to the model's dtype, so
    float64 noise from numpy works as it is.
    """

    anchor: torch.Tensor  # () buffer: its dtype is the model's

    def __init__(self, generator: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.latent_dim = latent_dim
        self.input_shape = (latent_dim,)
        self.register_buffer("anchor", torch.zeros(()))  # the model's dtype, for the cast below

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                "this generator takes noise of shape (N, " + str(self.latent_dim) + "), got " + str(list(z.shape))
            )
        images: torch.Tensor = self.generator(z.to(self.anchor.dtype))  # (N, 1, 28, 28) in [-1, 1]
        return (images + 1.0) * 0.5  # (N, 1, 28, 28) in [0, 1]


ARCHITECTURES = ("mlp", "dcgan")


def with_spectral_norm(discriminator: DCGANDiscriminator) -> DCGANDiscriminator:
    """``discriminator`` with spectral normalisation on its convolutions and its fc layer (each weight
    divided by its largest singular value, estimated by one power iteration per step: the
    discriminator stays 1-Lipschitz, SN-GAN) and its batch norm replaced by the identity, as SN-GAN's
    discriminator has none. Apply after initialising the weights."""
    layers = discriminator.net
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layers[i] = nn.utils.parametrizations.spectral_norm(layer)
        elif isinstance(layer, nn.BatchNorm2d):
            layers[i] = nn.Identity()
    return discriminator


def build_gan(
    arch: str, latent_dim: int = 100, width: int = 64, spectral_norm: bool = False
) -> tuple[nn.Module, nn.Module]:
    """A fresh (generator, discriminator) pair for ``arch`` ("mlp" or "dcgan"; ``width`` and
    ``spectral_norm`` are the DCGAN's); ValueError otherwise."""
    if arch == "mlp":
        return MLPGenerator(latent_dim), MLPDiscriminator()
    if arch == "dcgan":
        generator, discriminator = DCGANGenerator(latent_dim, width), DCGANDiscriminator(width)
        generator.apply(dcgan_init)
        discriminator.apply(dcgan_init)
        if spectral_norm:
            discriminator = with_spectral_norm(discriminator)
        return generator, discriminator
    raise ValueError(f"unknown GAN architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")

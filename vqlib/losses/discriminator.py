"""The PatchGAN discriminator and the hinge losses of VQGAN's adversarial term.

Papers: Isola, Zhu, Zhou and Efros, "Image-to-Image Translation with Conditional Adversarial
Networks" (CVPR 2017, "pix2pix"): a discriminator that scores overlapping patches instead of the
whole image, so it judges texture and leaves global structure to the reconstruction loss. Esser,
Rombach and Ommer, "Taming Transformers for High-Resolution Image Synthesis" (CVPR 2021) use it
with the hinge loss of Lim and Ye (2017) and Miyato et al. (2018):

    L_D = ½ (E[relu(1 - D(x))] + E[relu(1 + D(x̂))])        (discriminator)
    L_G = -E[D(x̂)]                                          (generator)

What is in it: ``PatchGANConfig``, ``PatchGAN`` (pix2pix's n-layer discriminator: 4×4
convolutions, stride 2 then 1, BatchNorm, LeakyReLU 0.2; three layers give 70×70 patches),
``receptive_field`` (the patch side one output logit sees), ``discriminator_loss`` and
``generator_loss``, two separate functions, as the book's style asks.

Left out: ActNorm (the taming code offers it instead of BatchNorm), spectral normalisation,
conditional discriminators, and the non-saturating (vanilla) GAN loss.

Dimension key: B batch, C image channels, H W image height and width, h w logit map.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.profile import pick

KERNEL = 4  # pix2pix: every convolution is 4×4 with padding 1


@dataclass(frozen=True)
class PatchGANConfig:
    in_channels: int = 3  # C
    width: int = 64  # channels of the first layer (pix2pix "ndf": 64); doubled per layer, at most 8×
    n_layers: int = 3  # stride-2 layers (pix2pix: 3, a 70×70 receptive field)

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.width < 1 or self.n_layers < 1:
            raise ValueError(f"need in_channels, width and n_layers >= 1, got {self}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> PatchGANConfig:
        """The book's size for a profile (default: the current one); ``overrides`` set any field."""
        sizes = pick(smoke=dict(width=8, n_layers=2), quick=dict(width=32, n_layers=2), full=dict(),
                     profile=profile)  # 2 layers: 34×34 patches, right for 32×32 crops
        return dataclasses.replace(cls(**sizes), **overrides)


def receptive_field(n_layers: int) -> int:
    """Side in pixels of the input patch one output logit depends on.

    Walking back from the output: each 4×4 convolution widens the field by 3 steps of its input,
    and a step of the input is 2^(number of stride-2 layers before it) pixels.
    """
    strides = [2] * n_layers + [1, 1]  # n stride-2 layers, one stride-1 layer, the stride-1 output layer
    field, step = 1, 1
    for s in strides:
        field += (KERNEL - 1) * step
        step *= s
    return field


class PatchGAN(nn.Module):
    """x (B, C, H, W) -> logits (B, 1, h, w), one real/fake score per overlapping patch.

    For H = W = 32 and 2 layers: h = w = 6; for 256 and 3 layers (the paper): 30.
    """

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_channels] + [config.width * min(2 ** i, 8) for i in range(config.n_layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(widths[0], widths[1], KERNEL, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]  # no norm on the first layer (pix2pix)
        for i in range(1, config.n_layers + 1):
            stride = 2 if i < config.n_layers else 1  # the last hidden layer keeps the resolution
            layers += [nn.Conv2d(widths[i], widths[i + 1], KERNEL, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(widths[i + 1]), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, KERNEL, stride=1, padding=1))  # one logit per patch
        self.net = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:  # pix2pix / DCGAN: N(0, 0.02), BatchNorm scale N(1, 0.02)
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.in_channels
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point image tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or x.shape[1] != c or x.shape[0] == 0:
            raise ValueError(f"x must have shape (B, {c}, H, W) with B >= 1, got {tuple(x.shape)}")
        smallest = 3 * 2 ** self.config.n_layers  # the two stride-1 layers need a 3×3 map to leave 1×1
        if min(x.shape[-2:]) < smallest:
            raise ValueError(f"images must be at least {smallest}×{smallest} for {self.config.n_layers} layers, "
                             f"got {tuple(x.shape[-2:])}")
        return self.net(x)  # (B, 1, h, w)


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.numel() == 0:
        raise TypeError(f"{name} must be a non-empty floating-point tensor of discriminator logits, got "
                        f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: ½ (mean relu(1 - D(x)) + mean relu(1 + D(x̂))) -> ().

    Pass ``logits_fake`` computed on ``x_hat.detach()``: this loss trains the discriminator only.
    """
    _check_logits("logits_real", logits_real)
    _check_logits("logits_fake", logits_fake)
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the generator: -mean D(x̂) -> (). Its gradient reaches the decoder through D."""
    _check_logits("logits_fake", logits_fake)
    return -logits_fake.mean()

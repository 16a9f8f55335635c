"""VQGAN's autoencoder: a residual encoder-decoder with GroupNorm, swish and self-attention.

Paper: Esser, Rombach and Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(CVPR 2021), section 3.1; the blocks are those of their code (which borrows them from the
diffusion model of Ho et al. 2020). Compared with the VQ-VAE of chapter 2 the network is deeper
and normalised: every residual block is GroupNorm, swish, 3×3 convolution, twice; the lowest
resolution has a self-attention block, so every code can see the whole image; and downsampling
and upsampling are a strided convolution and nearest-neighbour doubling plus a convolution.
The quantizer comes from ``vqlib.quantizers.factory``; β weighs the *commitment* term
β·‖z_e - sg[z_q]‖², which keeps the encoder near its codes (eq. 4 of the paper). Some public
releases put β on the codebook term instead: the tests pin the right one.

What the adversarial and perceptual losses add is in ``vqlib.losses.vqgan``.

What is in it: ``VQGANConfig`` (the paper's f = 16 model; ``for_profile`` for the book's sizes),
``ResnetBlock``, ``AttentionBlock``, ``Downsample``, ``Upsample``, ``Encoder``, ``Decoder``,
``VQGAN`` (``forward``, ``encode`` to indices, ``decode`` from indices, ``last_layer`` for the
adaptive weight) and ``FrozenCodes`` (a VQGAN whose encoder and codebook are fixed: only its decoder
trains, so every image keeps the codes of the model it was copied from).

Left out: dropout in the residual blocks, attention at resolutions other than the lowest, and
the separate 1×1 ``quant_conv`` of the released code (the encoder's last convolution maps to D).

Dimension key: B batch, C image channels, H W image height and width, F hidden channels,
f downsampling factor, h w = H/f, W/f code map, D code dim, K codebook size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import model_device
from vqlib.core.nn import check_images
from vqlib.core.profile import pick
from vqlib.quantizers.factory import make_quantizer
from vqlib.tokenizers.base import Tokenizer, check_index_rank

QUANTIZERS = ("vq", "ema")


@dataclass(frozen=True)
class VQGANConfig:
    in_channels: int = 3  # C
    hidden: int = 128  # F: channels at full resolution (the paper's "ch": 128)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # F multipliers per resolution; f = 2^(levels - 1) = 16
    res_blocks: int = 2  # residual blocks per resolution (the paper: 2)
    norm_groups: int = 32  # GroupNorm groups (the paper: 32); fewer if a width is not divisible
    codebook_size: int = 1024  # K (the paper: 1024 for ImageNet)
    code_dim: int = 256  # D (the paper: 256)
    beta: float = 0.25  # weight of the commitment term (the paper: 0.25)
    quantizer: str = "vq"  # "vq": codebook learned by gradient (the paper); "ema": chapter 2's EMA codebook
    decay: float = 0.99  # EMA decay ("ema" only)

    def __post_init__(self) -> None:
        for name in ("in_channels", "hidden", "norm_groups", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1 or self.res_blocks < 1:
            raise ValueError(f"need a non-empty channel_mult of positive ints and res_blocks >= 1, got "
                             f"channel_mult={self.channel_mult}, res_blocks={self.res_blocks}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def downsample(self) -> int:
        """f: each level but the last halves the resolution."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> VQGANConfig:
        """The book's size for a profile (default: the current one); ``overrides`` set any field.

        The book uses the EMA codebook of chapter 2 (data initialisation, dead-code restarts) in
        every profile: short runs with a gradient-trained codebook lose most of their codes.
        """
        sizes = pick(smoke=dict(hidden=16, channel_mult=(1, 2), res_blocks=1, norm_groups=8, codebook_size=32,
                                code_dim=8),
                     quick=dict(hidden=16, channel_mult=(1, 2, 2), res_blocks=1, norm_groups=8, codebook_size=512,
                                code_dim=32),
                     full=dict(channel_mult=(1, 1, 2, 2, 4)), profile=profile)
        return cls(**{**sizes, "quantizer": "ema", **overrides})


# ----------------------------------------------------------------------------- blocks

def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups, as many as divide ``channels``."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """x + conv(swish(norm(conv(swish(norm(x)))))), 1×1 projection of x when widths differ.

    (B, F_in, H, W) -> (B, F_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(group_norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  group_norm(c_out, groups), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttentionBlock(nn.Module):
    """x + proj(softmax(q kᵀ / √F) v) over all h·w positions, one head. (B, F, h, w) -> (B, F, h, w)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # 3 × (B, h·w, F)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h·w, F)
        return x + self.proj(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3×3 convolution of stride 2 after padding right and bottom by one: (B, F, H, W) -> (B, F, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour doubling, then a 3×3 convolution: (B, F, H, W) -> (B, F, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def middle(channels: int, groups: int) -> nn.Sequential:
    """The lowest resolution: residual block, self-attention, residual block."""
    return nn.Sequential(ResnetBlock(channels, channels, groups), AttentionBlock(channels, groups),
                         ResnetBlock(channels, channels, groups))


class Encoder(nn.Module):
    """(B, C, H, W) -> z_e (B, D, H/f, W/f)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden * m for m in config.channel_mult]
        g = config.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, widths[0], 3, padding=1)]
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.res_blocks):
                layers.append(ResnetBlock(c, width, g))
                c = width
            if level < len(widths) - 1:
                layers.append(Downsample(c))
        layers += [middle(c, g), group_norm(c, g), nn.SiLU(), nn.Conv2d(c, config.code_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))  # (B, D, h, w)


class Decoder(nn.Module):
    """z_q (B, D, h, w) -> x_hat (B, C, h·f, w·f); the output is linear."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden * m for m in config.channel_mult]
        g = config.norm_groups
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, c, 3, padding=1), middle(c, g)]
        for level in reversed(range(len(widths))):
            for _ in range(config.res_blocks + 1):  # one more block than the encoder (as in the paper's code)
                layers.append(ResnetBlock(c, widths[level], g))
                c = widths[level]
            if level > 0:
                layers.append(Upsample(c))
        layers += [group_norm(c, g), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, config.in_channels, 3, padding=1)  # the "last layer" of the adaptive weight

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z_q.contiguous(memory_format=torch.channels_last)))  # (B, C, H, W)


# ----------------------------------------------------------------------------- the model

class VQGAN(Tokenizer):
    """x (B, C, H, W), H and W multiples of f -> TokenizerOutput(x_hat, loss, indices (B, h, w), z_e, z_q).

    ``encode``: x -> indices (B, h, w); ``decode``: indices -> x_hat (B, C, h·f, w·f)
    (``vqlib.tokenizers.base.Tokenizer``). β is always the commitment weight.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        ema = dict(decay=config.decay) if config.quantizer == "ema" else {}
        self.quantizer = make_quantizer(config.quantizer, config.code_dim, codebook_size=config.codebook_size,
                                        beta=config.beta, **ema)
        self.decoder = Decoder(config)
        # channels-last weights and activations: on a CPU the convolutions of narrow layers run about twice as fast
        self.to(memory_format=torch.channels_last)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the adaptive weight λ compares gradients."""
        return self.decoder.conv_out.weight

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless x is a float (B, C, H, W) batch with H, W multiples of f."""
        check_images(x, self.config.in_channels, self.config.downsample, dtype=next(self.parameters()).dtype)

    def check_index_shape(self, indices: torch.Tensor) -> None:
        check_index_rank(indices, 3, "(B, h, w) code map")


class FrozenCodes(VQGAN):
    """A VQGAN whose encoder and codebook never change: training it trains the decoder only.

    ``FrozenCodes.of(model)`` copies a trained model; its ``encode`` then gives exactly the codes of
    ``model`` for every image, however long the copy trains. The encoder's parameters get no gradient,
    and the encoder and quantizer stay in eval mode when the model is put in training mode, so an EMA
    codebook does not move either. The quantizer's loss is then a constant, with no gradient.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)

    @classmethod
    def of(cls, model: VQGAN) -> FrozenCodes:
        """A copy of ``model`` (its config and weights, on its device) with the encoder and codebook frozen."""
        frozen = cls(model.config).to(model_device(model))
        frozen.load_state_dict(model.state_dict())
        return frozen

    def train(self, mode: bool = True) -> FrozenCodes:
        super().train(mode)
        self.encoder.eval()
        self.quantizer.eval()
        return self

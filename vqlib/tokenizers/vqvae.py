"""The VQ-VAE: a convolutional autoencoder with a vector-quantised bottleneck.

Paper: van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete Representation Learning"
(NeurIPS 2017). The encoder turns an image into a map of D-dimensional vectors, H/f × W/f for a
downsampling factor f; the quantizer replaces each vector by its nearest code (``vqlib.quantizers.vector``);
the decoder turns the map of codes back into an image. Training minimises the reconstruction
error plus the quantizer's loss; the integer code map is what later chapters model with priors.

What is in it: ``VQVAEConfig`` (paper defaults, ``for_profile`` for the book's sizes), the
encoder and decoder of the paper (strided convolutions and residual blocks, ``vqlib.core.nn``),
``VQVAE`` with ``encode`` (image -> indices) and ``decode`` (indices -> image), and the training
loss and evaluation used by the chapters. ``vqlib.recipes.ch02_vqvae.train_mnist_vqvae`` trains the
cached MNIST model that later chapters share.

Left out: the paper's autoregressive prior (chapter 3), hierarchical latents (chapter 4), the
adversarial and perceptual losses (chapter 5). The decoder's output has no sigmoid: a linear
output and a squared error are the Gaussian likelihood of the paper, and train faster.

Dimension key: B batch, C image channels, H W image height and width, f downsampling factor,
h w = H/f, W/f code-map height and width, D code dim, K codebook size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import model_device, to_device
from vqlib.core.metrics import code_counts, codebook_usage, perplexity, psnr
from vqlib.core.nn import check_images, downsample, res_stack, upsample
from vqlib.core.inference import evaluating
from vqlib.core.profile import pick
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import codes_per_position, joint_indices
from vqlib.tokenizers.base import Tokenizer, check_index_rank

QUANTIZERS = ("ema", "vq")


@dataclass(frozen=True)
class VQVAEConfig:
    in_channels: int = 3  # image channels: 1 for MNIST, 3 for colour images
    hidden: int = 128  # channels of the encoder and decoder (the authors' Sonnet example: 128)
    res_hidden: int = 32  # channels inside a residual block (Sonnet example: 32)
    res_blocks: int = 2  # residual blocks in the encoder and in the decoder (the paper: 2)
    downsample: int = 4  # f: the code map is H/f × W/f; a power of 2 (the paper: 4)
    codebook_size: int = 512  # K (the paper: 512)
    code_dim: int = 64  # D (Sonnet example: 64)
    beta: float = 0.25  # weight of the commitment loss (the paper: 0.25)
    quantizer: str = "ema"  # "ema": EMA codebook, data init, dead-code restarts; "vq": codebook by gradient
    decay: float = 0.99  # EMA decay of the codebook statistics (quantizer "ema" only)
    data_init: bool = True  # "ema": the codebook starts from encoder outputs of the first batch
    restart_threshold: float = 1.0  # "ema": codes used < this many times per batch are re-seeded; 0 = never

    def __post_init__(self) -> None:
        for name in ("in_channels", "hidden", "res_hidden", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.res_blocks < 0:
            raise ValueError(f"res_blocks must be >= 0, got {self.res_blocks}")
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of 2 >= 2, got {self.downsample}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> VQVAEConfig:
        """The book's size for a profile (default: the current one); ``overrides`` set any field."""
        sizes = pick(smoke=dict(hidden=16, res_hidden=8, res_blocks=1, codebook_size=32, code_dim=8),
                     quick=dict(hidden=64, res_hidden=32, res_blocks=2, codebook_size=512, code_dim=32),
                     full=dict(), profile=profile)
        return cls(**{**sizes, **overrides})


def channel_ladder(config: VQVAEConfig) -> list[int]:
    """Channels from image to features across the log2(f) halvings: [C, F/2, ..., F/2, F].

    The encoder climbs it with strided convolutions, the decoder comes down it with transposed ones.
    """
    halvings = int(math.log2(config.downsample))
    return [config.in_channels] + [config.hidden // 2] * (halvings - 1) + [config.hidden]


class Encoder(nn.Module):
    """Strided 4×4 convolutions (÷2 each), a 3×3 convolution, residual blocks, a 1×1 projection to D.

    (B, C, H, W) -> (B, D, H/f, W/f).
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        widths = channel_ladder(config)
        self.net = nn.Sequential(
            *(m for c_in, c_out in zip(widths, widths[1:]) for m in (downsample(c_in, c_out), nn.ReLU())),
            nn.Conv2d(config.hidden, config.hidden, kernel_size=3, padding=1),
            res_stack(config.hidden, config.res_hidden, config.res_blocks),
            nn.Conv2d(config.hidden, config.code_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, D, h, w)


class Decoder(nn.Module):
    """A 3×3 convolution from D, residual blocks, transposed 4×4 convolutions (×2 each); linear output.

    (B, D, h, w) -> (B, C, h·f, w·f).
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        widths = channel_ladder(config)[::-1]
        layers = [m for c_in, c_out in zip(widths, widths[1:]) for m in (upsample(c_in, c_out), nn.ReLU())]
        self.net = nn.Sequential(
            nn.Conv2d(config.code_dim, config.hidden, kernel_size=3, padding=1),
            res_stack(config.hidden, config.res_hidden, config.res_blocks),
            *layers[:-1],  # no ReLU after the last layer: the output is linear
        )

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.net(z_q)  # (B, C, H, W)


def quantizer_options(config: VQVAEConfig) -> dict:
    """The options of ``make_quantizer(config.quantizer, config.code_dim, **options)`` for this config."""
    options = dict(codebook_size=config.codebook_size, beta=config.beta)
    if config.quantizer == "ema":
        options.update(decay=config.decay, data_init=config.data_init, restart_threshold=config.restart_threshold)
    return options


class VQVAE(Tokenizer):
    """x (B, C, H, W), H and W multiples of f -> TokenizerOutput(x_hat, loss, indices (B, h, w), z_e, z_q).

    ``encode``: x -> indices (B, h, w); ``decode``: indices -> x_hat (B, C, h·f, w·f)
    (``vqlib.tokenizers.base.Tokenizer``). ``quantizer`` (optional) replaces the one
    ``config.quantizer`` names: any module that takes (B, D, h, w) latents with D =
    ``config.code_dim``, returns a ``QuantizerOutput`` and has ``decode_indices`` (chapter 6
    compares several). A residual quantizer's indices carry a stage axis, (B, S, h, w).
    """

    def __init__(self, config: VQVAEConfig, quantizer: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        if quantizer is None:
            quantizer = make_quantizer(config.quantizer, config.code_dim, **quantizer_options(config))
        self.quantizer = quantizer
        self.decoder = Decoder(config)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless x is a float (B, C, H, W) batch with H, W multiples of f."""
        check_images(x, self.config.in_channels, self.config.downsample, dtype=next(self.parameters()).dtype)

    def check_index_shape(self, indices: torch.Tensor) -> None:
        """indices must be (B, h, w), or (B, S, h, w) for a quantizer of S stages."""
        stages = getattr(self.quantizer, "num_stages", None)
        if stages is None:
            check_index_rank(indices, 3, "(B, h, w) code map")
        else:
            check_index_rank(indices, 4, f"(B, S={stages}, h, w) code map")


# ----------------------------------------------------------------------------- loss and evaluation

def vqvae_loss(model: VQVAE, batch: tuple) -> dict[str, torch.Tensor]:
    """The loss ``vqlib.training.loop.fit`` optimises: mse(x_hat, x) + the quantizer's loss."""
    x = batch[0]
    out = model(x)
    recon = F.mse_loss(out.x_hat, x)
    return {"loss": recon + out.loss, "recon": recon, "vq": out.loss}


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, data: TensorDataset, batch_size: int = 500) -> dict[str, float]:
    """Over all of ``data``: PSNR (dB, outputs clipped to [0, 1]), codebook usage and perplexity
    (of the joint code of a position, see ``vqlib.quantizers.vector.joint_indices``), and bits per image,
    h·w·log2(codes per position)."""
    device = model_device(model)
    scores, indices = [], []
    with evaluating(model):
        for start in range(0, len(data), batch_size):
            x = to_device(data[start:start + batch_size][0], device)
            out = model(x)
            scores.append(psnr(x, out.x_hat.clamp(0, 1)) * len(x))
            indices.append(joint_indices(model.quantizer, out.indices))  # (B, h, w)
    size = codes_per_position(model.quantizer)
    counts = code_counts(indices, size)
    return {"psnr": float(sum(scores)) / len(data), "usage": codebook_usage(counts),
            "perplexity": perplexity(counts), "bits": math.prod(indices[0].shape[1:]) * math.log2(size)}

"""VQ-VAE-2: two levels of codes, a coarse top map that conditions a finer bottom map.

Paper: Razavi, van den Oord and Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2"
(NeurIPS 2019). The bottom encoder maps an image to features at 1/4 of its resolution; the top
encoder maps those to 1/8 and quantises them (the *top* codes). The top codes are decoded back to
1/4 resolution and, concatenated with the bottom features, quantised into the *bottom* codes. The
decoder sees both: the top codes upsampled to 1/4, next to the bottom codes (Fig. 2a of the paper).
Priors are trained afterwards, in stages: one over the top codes, then one over the bottom codes
conditioned on the top codes (Fig. 2b); sampling runs them in that order.

What is in it: ``VQVAE2Config`` (the paper's two levels, ``for_profile`` for the book's sizes),
``VQVAE2`` with ``encode`` (image -> top and bottom indices) and ``decode`` (both -> image),
built from the chapter 2 encoder and decoder (``vqlib.tokenizers.vqvae``) and EMA quantizers
(``vqlib.quantizers.vector``); ``BottomPrior``, a chapter 3 GPT (``vqlib.priors.gpt``) that reads the top codes
as a prefix before the bottom codes; ``equal_bits_codebook_size``, the codebook of a one-level model
with the same code bits. Chapter 4 trains them in ``vqlib.recipes.ch04_vqvae2``.

Left out: the paper's third level (for 1024 px), its PixelCNN priors with self-attention (the top
prior here is the chapter 3 gated PixelCNN; the bottom prior is a GPT, whose attention lets every
bottom position see every top code), and classifier-based rejection sampling.

Dimension key: B batch, C image channels, H W image height and width, D code dim, K codebook size,
h w = H/4, W/4 bottom code map, ht wt = H/8, W/8 top code map, F hidden channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.inference import evaluating
from vqlib.core.nn import check_images, upsample
from vqlib.core.profile import pick
from vqlib.priors.base import check_sampling, check_tokens
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import QuantizerOutput
from vqlib.tokenizers.base import TokenizerOutput, check_index_rank
from vqlib.tokenizers.vqvae import Decoder, Encoder, VQVAEConfig


@dataclass(frozen=True)
class VQVAE2Config:
    in_channels: int = 3  # image channels
    hidden: int = 128  # F: channels of the encoders and decoders (the paper: 128)
    res_hidden: int = 64  # channels inside a residual block (the paper: 64)
    res_blocks: int = 2  # residual blocks per encoder and decoder (the paper: 2)
    codebook_size: int = 512  # K of each level (the paper: 512 for both)
    code_dim: int = 64  # D of each level (the paper: 64)
    beta: float = 0.25  # commitment weight (the paper: 0.25)
    decay: float = 0.99  # EMA decay of both codebooks (the paper: 0.99)

    def __post_init__(self) -> None:
        self.part(self.in_channels, self.code_dim, downsample=4)  # VQVAEConfig checks every size

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> VQVAE2Config:
        """The book's size for a profile (default: the current one); ``overrides`` set any field."""
        sizes = pick(smoke=dict(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, code_dim=8),
                     quick=dict(hidden=48, res_hidden=24, res_blocks=1, codebook_size=256, code_dim=32),
                     full=dict(codebook_size=256), profile=profile)  # 256: the one-level baseline gets 256^1.25
        return cls(**{**sizes, **overrides})

    def part(self, in_channels: int, code_dim: int, downsample: int) -> VQVAEConfig:
        """The config of one chapter 2 encoder or decoder inside this model."""
        return VQVAEConfig(in_channels=in_channels, hidden=self.hidden, res_hidden=self.res_hidden,
                           res_blocks=self.res_blocks, downsample=downsample, code_dim=code_dim,
                           codebook_size=self.codebook_size, beta=self.beta, decay=self.decay)


class VQVAE2(nn.Module):
    """x (B, C, H, W), H and W multiples of 8 -> TokenizerOutput(x_hat, loss, indices, z_e, z_q) with
    one entry per level, top first: indices (top (B, ht, wt), bottom (B, h, w)), z_e and z_q
    ((B, D, ht, wt), (B, D, h, w)); loss is both quantizers' losses. See the module docstring.
    """

    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__()
        self.config = config
        c, f, d = config.in_channels, config.hidden, config.code_dim
        self.encoder_bottom = Encoder(config.part(c, f, downsample=4))  # x -> features at H/4
        self.encoder_top = Encoder(config.part(f, d, downsample=2))  # features at H/4 -> z_e_top at H/8
        self.quantizer_top = make_quantizer("ema", d, codebook_size=config.codebook_size, beta=config.beta,
                                            decay=config.decay)
        self.decoder_top = Decoder(config.part(d, d, downsample=2))  # z_q_top -> (B, D, h, w), conditions the bottom
        self.to_bottom = nn.Conv2d(f + d, d, kernel_size=1)  # [features, decoded top] -> z_e_bottom
        self.quantizer_bottom = make_quantizer("ema", d, codebook_size=config.codebook_size, beta=config.beta,
                                               decay=config.decay)
        self.upsample_top = upsample(d, d)  # z_q_top -> (B, D, h, w) for the decoder
        self.decoder = Decoder(config.part(c, 2 * d, downsample=4))  # [top, bottom] -> x_hat

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless x is a float (B, C, H, W) batch with H, W multiples of 8."""
        check_images(x, self.config.in_channels, 8, why="the top codes' downsampling factor",
                     dtype=next(self.parameters()).dtype)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput, torch.Tensor, QuantizerOutput]:
        """Encoders and quantizers, top first: x (B, C, H, W) -> (z_e_top, top, z_e_bottom, bottom)."""
        features = self.encoder_bottom(x)  # (B, F, h, w)
        z_e_top = self.encoder_top(features)  # (B, D, ht, wt)
        top = self.quantizer_top(z_e_top)
        z_e_bottom = self.to_bottom(torch.cat([features, self.decoder_top(top.z_q)], dim=1))  # (B, D, h, w)
        return z_e_top, top, z_e_bottom, self.quantizer_bottom(z_e_bottom)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self.check_input(x)
        z_e_top, top, z_e_bottom, bottom = self.quantize(x)
        x_hat = self.decode_latents(top.z_q, bottom.z_q)  # (B, C, H, W)
        return TokenizerOutput(x_hat, top.loss + bottom.loss, (top.indices, bottom.indices), (z_e_top, z_e_bottom),
                               (top.z_q, bottom.z_q))

    def decode_latents(self, z_q_top: torch.Tensor, z_q_bottom: torch.Tensor) -> torch.Tensor:
        """z_q_top (B, D, ht, wt), z_q_bottom (B, D, h, w) -> x_hat (B, C, H, W)."""
        return self.decoder(torch.cat([self.upsample_top(z_q_top), z_q_bottom], dim=1))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (top_indices (B, ht, wt), bottom_indices (B, h, w)). No codebook update."""
        self.check_input(x)
        with evaluating(self):  # EMA quantizers in training mode would update their codebooks
            _, top, _, bottom = self.quantize(x)
        return top.indices, bottom.indices

    @torch.no_grad()
    def decode(self, indices: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """What ``encode`` returns, (top (B, ht, wt), bottom (B, 2·ht, 2·wt)) long -> x_hat (B, C, 8·ht, 8·wt)."""
        if not isinstance(indices, (tuple, list)) or len(indices) != 2:
            got = type(indices).__name__ + (f" of {len(indices)}" if isinstance(indices, (tuple, list)) else "")
            raise ValueError(f"indices must be the pair (top, bottom) of code maps that encode returns, got {got}")
        top, bottom = indices
        for name, t in (("top", top), ("bottom", bottom)):
            check_index_rank(t, 3, "(B, h, w) code map", name=name)
        b, ht, wt = top.shape
        if bottom.shape != (b, 2 * ht, 2 * wt):
            raise ValueError(f"the bottom code map must be twice the top map's size: top {tuple(top.shape)} needs "
                             f"bottom {(b, 2 * ht, 2 * wt)}, got {tuple(bottom.shape)}")
        return self.decode_latents(self.quantizer_top.decode_indices(top), self.quantizer_bottom.decode_indices(bottom))


# ----------------------------------------------------------------------------- the conditional bottom prior

class BottomPrior(nn.Module):
    """p(bottom | top): a GPT over the sequence [top codes, bottom codes], both in raster order.

    The top codes are a prefix: every bottom code attends to all of them (the condition) and to the
    bottom codes before it (causal attention), and the loss is taken on the bottom codes only.
    Top and bottom share the vocabulary [0, K) and are told apart by their positions.
    bottom (B, h, w), top (B, ht, wt) long -> logits (B, K, h, w).
    """

    def __init__(self, config: GPTConfig, top_shape: tuple[int, int], bottom_shape: tuple[int, int]) -> None:
        super().__init__()
        self.top_shape, self.bottom_shape = tuple(top_shape), tuple(bottom_shape)
        if config.block_size != math.prod(top_shape) + math.prod(bottom_shape):
            raise ValueError(f"block_size must be {math.prod(top_shape)} top + {math.prod(bottom_shape)} bottom "
                             f"positions, got {config.block_size}")
        self.config = config
        self.gpt = GPT(config)

    def check(self, bottom: torch.Tensor, top: torch.Tensor) -> None:
        k = self.config.vocab_size
        check_tokens(top, k, f"(B, {self.top_shape[0]}, {self.top_shape[1]})", ndim=3)
        check_tokens(bottom, k, f"(B, {self.bottom_shape[0]}, {self.bottom_shape[1]})", ndim=3)
        if top.shape[1:] != self.top_shape or bottom.shape != (len(top), *self.bottom_shape):
            raise ValueError(f"expected top (B, {self.top_shape[0]}, {self.top_shape[1]}) and bottom "
                             f"(B, {self.bottom_shape[0]}, {self.bottom_shape[1]}) with the same B, got "
                             f"{tuple(top.shape)} and {tuple(bottom.shape)}")

    def forward(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Logits of every bottom code given the top codes and the bottom codes before it: (B, K, h, w)."""
        self.check(bottom, top)
        n_top = top[0].numel()
        sequence = torch.cat([top.flatten(1), bottom.flatten(1)], dim=1)  # (B, Lt + Lb)
        logits = self.gpt(sequence[:, :-1])[:, n_top - 1:]  # (B, Lb, K): row t predicts bottom code t
        return logits.transpose(1, 2).reshape(len(top), -1, *self.bottom_shape)  # (B, K, h, w)

    def nll(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per bottom code: (B, h, w), (B, ht, wt) -> (B,)."""
        return F.cross_entropy(self(bottom, top), bottom, reduction="none").flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, top: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """Bottom code maps for the given top codes, one code at a time: (n, ht, wt) -> (n, h, w)."""
        check_sampling(len(top), temperature, top_k)
        self.check(torch.zeros(len(top), *self.bottom_shape, dtype=torch.long, device=top.device), top)
        sequence = self.gpt.sample(len(top), self.config.block_size, temperature=temperature, top_k=top_k,
                                   prefix=top.flatten(1))  # (n, Lt + Lb)
        return sequence[:, top[0].numel():].view(len(top), *self.bottom_shape)


# ----------------------------------------------------------------------------- sizes

def equal_bits_codebook_size(config: VQVAE2Config) -> int:
    """K of a one-level model at 1/4 resolution with the two-level model's code bits.

    Two levels spend (h·w + h·w/4)·log2 K bits; one level at h × w needs log2 K' = 1.25·log2 K.
    """
    k = 2 ** (1.25 * math.log2(config.codebook_size))
    if abs(k - round(k)) > 1e-6:
        raise ValueError(f"K^1.25 is not an integer for codebook_size={config.codebook_size}: use a power of 16")
    return round(k)

"""VQ-VAE-2: two levels of codes, a coarse top map that conditions a finer bottom map.

Paper: Razavi, van den Oord and Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2"
(NeurIPS 2019). The bottom encoder maps an image to features at 1/4 of its resolution; the top
encoder maps those to 1/8 and quantises them (the *top* codes). The top codes are decoded back to
1/4 resolution and, concatenated with the bottom features, quantised into the *bottom* codes. The
decoder sees both: the top codes upsampled to 1/4, next to the bottom codes (Fig. 2a of the paper).
Priors are trained afterwards, in stages: one over the top codes, then one over the bottom codes
conditioned on the top codes (Fig. 2b); sampling runs them in that order.

What is in it: ``VQVAE2Config`` (the paper's two levels, each with its own codebook size;
``for_profile`` for the book's sizes), ``VQVAE2`` with ``encode`` (image -> top and bottom indices)
and ``decode`` (both -> image), built from the chapter 2 encoder and decoder
(``vqlib.tokenizers.vqvae``) and EMA quantizers (``vqlib.quantizers.vector``); ``BottomPrior``, a
chapter 3 GPT (``vqlib.priors.gpt``) that reads the top map first, then each top code followed by
the bottom codes under it; ``equal_bits_codebook_size``, the codebook of a one-level model with the
same code bits. Chapter 4 trains them, and a GPT over the top codes, in ``vqlib.recipes.ch04_vqvae2``.

Left out: the paper's third level (for 1024 px), its PixelCNN priors with self-attention and the
bottom prior's conditioning stack (here both priors are GPTs: attention lets every position see
every earlier one, and the sequence order puts each top code next to the bottom codes it
conditions), and classifier-based rejection sampling (chapter 4 has it as an exercise).

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
from vqlib.priors.base import check_sampling, check_tokens, sample_from_logits
from vqlib.priors.gpt import GPT, GPTConfig, KVCache
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
    codebook_size: int = 512  # K of the top codebook (the paper: 512)
    bottom_codebook_size: int = 512  # K of the bottom codebook (the paper: 512)
    code_dim: int = 64  # D of each level (the paper: 64)
    beta: float = 0.25  # commitment weight (the paper: 0.25)
    decay: float = 0.99  # EMA decay of both codebooks (the paper: 0.99)

    def __post_init__(self) -> None:
        self.part(self.in_channels, self.code_dim, downsample=4)  # VQVAEConfig checks every size
        if self.bottom_codebook_size < 2:
            raise ValueError(f"bottom_codebook_size must be >= 2, got {self.bottom_codebook_size}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> VQVAE2Config:
        """The book's size for a profile (default: the current one); ``overrides`` set any field."""
        # a small bottom codebook, so that the bottom codes cannot carry the whole image and the top codes
        # must carry the layout (chapter 4 measures it); Kt a power of 16 gives the baseline a whole K'
        sizes = pick(smoke=dict(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, bottom_codebook_size=4,
                                code_dim=8),
                     quick=dict(hidden=48, res_hidden=24, res_blocks=1, codebook_size=256, bottom_codebook_size=8,
                                code_dim=32),
                     full=dict(codebook_size=256, bottom_codebook_size=8), profile=profile)
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
        self.quantizer_bottom = make_quantizer("ema", d, codebook_size=config.bottom_codebook_size, beta=config.beta,
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
    """p(bottom | top): a GPT over the top codes, then the bottom codes next to the top code above them.

    The sequence is the whole top map in raster order (a prefix: every bottom code attends to all of
    it), then, for each top code in raster order, that top code again followed by the 2×2 bottom
    codes under it. Repeating each top code right before its bottom codes puts the condition of a
    bottom code one or a few positions back, where attention finds it at once; the paper gets the
    same alignment by adding an upsampled conditioning stack over the top map to its PixelCNN. Any
    fixed order is a valid factorisation of p(bottom | top); the loss is taken on the bottom codes only.
    The two codebooks get separate tokens: bottom code k is token k, top code k is token Kb + k
    (``codebook_sizes`` = (Kt, Kb), ``config.vocab_size`` = Kt + Kb, ``config.block_size`` = 6·ht·wt),
    and a bottom code's distribution is the softmax over the first Kb logits.
    bottom (B, h, w) = (B, 2·ht, 2·wt), top (B, ht, wt) long -> logits (B, Kb, h, w).
    """

    def __init__(self, config: GPTConfig, top_shape: tuple[int, int], codebook_sizes: tuple[int, int]) -> None:
        super().__init__()
        self.top_shape = tuple(top_shape)
        self.bottom_shape = (2 * self.top_shape[0], 2 * self.top_shape[1])
        self.top_codebook_size, self.bottom_codebook_size = map(int, codebook_sizes)
        n_top = math.prod(top_shape)
        if config.block_size != 6 * n_top:
            raise ValueError(f"block_size must be 6 × {n_top} top positions (the top map, then each top code "
                             f"with its 4 bottom codes) = {6 * n_top}, got {config.block_size}")
        if config.vocab_size != sum(codebook_sizes):
            raise ValueError(f"vocab_size must be Kt + Kb = {sum(codebook_sizes)} (codebook_sizes "
                             f"{tuple(codebook_sizes)}), got {config.vocab_size}")
        self.config = config
        self.gpt = GPT(config)

    def check(self, bottom: torch.Tensor, top: torch.Tensor) -> None:
        (ht, wt), (h, w) = self.top_shape, self.bottom_shape
        check_tokens(top, self.top_codebook_size, f"(B, {ht}, {wt}) top", ndim=3)
        check_tokens(bottom, self.bottom_codebook_size, f"(B, {h}, {w}) bottom", ndim=3)
        if top.shape[1:] != self.top_shape or bottom.shape != (len(top), h, w):
            raise ValueError(f"expected top (B, {ht}, {wt}) and bottom (B, {h}, {w}) with the same B, got "
                             f"{tuple(top.shape)} and {tuple(bottom.shape)}")

    def sequence(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """The token sequence the GPT reads: (B, h, w), (B, ht, wt) -> (B, 6·ht·wt) (see the class docstring)."""
        b, (ht, wt) = len(top), self.top_shape
        blocks = bottom.view(b, ht, 2, wt, 2).permute(0, 1, 3, 2, 4).reshape(b, ht * wt, 4)  # (B, Lt, 4) under each top code
        shifted = top.reshape(b, ht * wt, 1) + self.bottom_codebook_size  # (B, Lt, 1)
        return torch.cat([shifted.flatten(1), torch.cat([shifted, blocks], dim=2).flatten(1)], dim=1)  # (B, 6 Lt)

    def forward(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Logits of every bottom code given the top codes and the bottom codes before it: (B, Kb, h, w)."""
        self.check(bottom, top)
        b, (ht, wt), k = len(top), self.top_shape, self.bottom_codebook_size
        n_top = ht * wt
        logits = self.gpt(self.sequence(bottom, top)[:, :-1])[:, n_top - 1:, :k]  # (B, 5 Lt, Kb): after the prefix
        logits = logits.reshape(b, n_top, 5, k)[:, :, 1:]  # (B, Lt, 4, Kb): the rows that predict bottom codes
        return logits.reshape(b, ht, wt, 2, 2, k).permute(0, 5, 1, 3, 2, 4).reshape(b, k, *self.bottom_shape)

    def nll(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per bottom code: (B, h, w), (B, ht, wt) -> (B,)."""
        return F.cross_entropy(self(bottom, top), bottom, reduction="none").flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, top: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """Bottom code maps for the given top codes, one code at a time: (n, ht, wt) -> (n, h, w).

        Each step feeds the GPT only what it has not seen (its key/value cache holds the rest): the
        newest bottom code, and before each group of four the top code above them.
        """
        check_sampling(len(top), temperature, top_k)
        self.check(torch.zeros(len(top), *self.bottom_shape, dtype=torch.long, device=top.device), top)
        n, (ht, wt) = len(top), self.top_shape
        shifted = top.flatten(1) + self.bottom_codebook_size  # (n, Lt)
        caches = [KVCache() for _ in self.gpt.blocks]
        new, codes = torch.cat([shifted, shifted[:, :1]], dim=1), []  # the prefix, then the first top code
        for cell in range(ht * wt):
            for _ in range(4):
                logits = self.gpt.next_logits(new, caches=caches)[:, :self.bottom_codebook_size]  # (n, Kb)
                new = sample_from_logits(logits, temperature, top_k)[:, None]  # (n, 1)
                codes.append(new)
            new = torch.cat([new, shifted[:, cell + 1:cell + 2]], dim=1)  # then the next top code, if any
        blocks = torch.cat(codes, dim=1).view(n, ht, wt, 2, 2)  # (n, ht, wt, 2, 2)
        return blocks.permute(0, 1, 3, 2, 4).reshape(n, *self.bottom_shape)  # (n, h, w)


# ----------------------------------------------------------------------------- sizes

def equal_bits_codebook_size(config: VQVAE2Config) -> int:
    """K' of a one-level model at 1/4 resolution with the two-level model's code bits.

    Two levels spend h·w·log2 Kb + (h·w/4)·log2 Kt bits; one level at h × w needs
    log2 K' = log2 Kb + log2 Kt / 4 bits per position.
    """
    log2_k = math.log2(config.bottom_codebook_size) + math.log2(config.codebook_size) / 4
    if abs(log2_k - round(log2_k)) > 1e-9:
        raise ValueError(f"Kb·Kt^(1/4) is not a power of 2 for codebook_size={config.codebook_size}, "
                         f"bottom_codebook_size={config.bottom_codebook_size}: use powers of 2, Kt a power of 16")
    return 2 ** round(log2_k)

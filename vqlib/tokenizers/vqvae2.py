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
as a prefix before the bottom codes; the cached recipes of chapter 4 (``train_photo_vqvae2``,
the one-level baseline ``train_photo_vqvae`` at the same code bits, and ``train_photo_priors``).

Left out: the paper's third level (for 1024 px), its PixelCNN priors with self-attention (the top
prior here is the chapter 3 gated PixelCNN; the bottom prior is a GPT, whose attention lets every
bottom position see every top code), and classifier-based rejection sampling.

Dimension key: B batch, C image channels, H W image height and width, D code dim, K codebook size,
h w = H/4, W/4 bottom code map, ht wt = H/8, W/8 top code map, F hidden channels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.inference import evaluating, in_batches
from vqlib.core.metrics import psnr, ssim
from vqlib.core.nn import check_images, upsample
from vqlib.core.profile import pick, seed_everything
from vqlib.priors.base import check_sampling, check_tokens, train_prior
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import QuantizerOutput
from vqlib.tokenizers.base import TokenizerOutput, check_index_rank
from vqlib.tokenizers.vqvae import VQVAE, Decoder, Encoder, VQVAEConfig, vqvae_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit, split_overrides


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
        check_images(x, self.config.in_channels, 8, why="the top codes' downsampling factor")

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
    def decode(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """top (B, ht, wt), bottom (B, 2·ht, 2·wt) long -> x_hat (B, C, 8·ht, 8·wt)."""
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


# ----------------------------------------------------------------------------- training recipes

def reconstruct(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """A one- or two-level model's reconstructions of x (N, C, H, W), clipped to [0, 1], on the CPU."""
    return in_batches(lambda batch: model(batch).x_hat.clamp(0, 1), model, x, batch_size)


def image_scores(model: nn.Module, data: TensorDataset) -> dict[str, float]:
    """Held-out PSNR (dB) and SSIM of a model's reconstructions of ``data``."""
    x = data.tensors[0]
    x_hat = reconstruct(model, x)
    return {"psnr": float(psnr(x, x_hat)), "ssim": float(ssim(x, x_hat))}


def photo_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of the chapter 4 autoencoders (both get the same)."""
    defaults = dict(steps=pick(10, 600, 30_000, profile=profile), batch_size=pick(16, 16, 128, profile=profile),
                    lr=pick(2e-3, 2e-3, 3e-4, profile=profile), cosine=True, log_every=pick(5, 25, 100, profile=profile),
                    max_seconds=pick(None, 100.0, None, profile=profile))  # a safety net: quick runs take ~60 s
    return TrainConfig(**{**defaults, **overrides})


def fit_on_photos(name: str, model: nn.Module, loss_fn, train_config: TrainConfig,
                  profile: str | None = None) -> History:
    """Train an autoencoder on ``photos("train")`` (or load it from the cache), scored on ``photos("test")``."""
    from vqlib.data.photos import photos

    test = photos("test", profile=profile)
    return fit(model, loss_fn, photos("train", profile=profile), train_config, eval_fn=lambda m: image_scores(m, test),
               checkpoint=checkpoint_path(name, model.config, train_config, profile=profile))


def train_photo_vqvae2(profile: str | None = None, **overrides) -> tuple[VQVAE2, History]:
    """The chapter 4 VQ-VAE-2 on photographs, trained once per profile and config, then cached.

    ``overrides`` set fields of VQVAE2Config or TrainConfig. Returns the model in eval mode and its
    History (with held-out PSNR and SSIM).
    """
    model_overrides, train_overrides = split_overrides(overrides, VQVAE2Config)
    train_config = photo_train_config(profile, **train_overrides)
    seed_everything(train_config.seed)
    model = VQVAE2(VQVAE2Config.for_profile(profile, **model_overrides))
    return model, fit_on_photos("photo-vqvae2", model, vqvae_loss, train_config, profile)  # mse + both VQ losses


def equal_bits_codebook_size(config: VQVAE2Config) -> int:
    """K of a one-level model at 1/4 resolution with the two-level model's code bits.

    Two levels spend (h·w + h·w/4)·log2 K bits; one level at h × w needs log2 K' = 1.25·log2 K.
    """
    k = 2 ** (1.25 * math.log2(config.codebook_size))
    if abs(k - round(k)) > 1e-6:
        raise ValueError(f"K^1.25 is not an integer for codebook_size={config.codebook_size}: use a power of 16")
    return round(k)


def train_photo_vqvae(profile: str | None = None, **overrides) -> tuple[VQVAE, History]:
    """The one-level baseline: a chapter 2 VQ-VAE (factor 4) with the two-level model's sizes and code bits."""
    model_overrides, train_overrides = split_overrides(overrides, VQVAEConfig)
    two_level = VQVAE2Config.for_profile(profile)
    same_bits = dataclasses.replace(two_level.part(two_level.in_channels, two_level.code_dim, downsample=4),
                                    codebook_size=equal_bits_codebook_size(two_level))
    train_config = photo_train_config(profile, **train_overrides)
    seed_everything(train_config.seed)
    model = VQVAE(dataclasses.replace(same_bits, **model_overrides))
    return model, fit_on_photos("photo-vqvae", model, vqvae_loss, train_config, profile)


def prior_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of each chapter 4 prior."""
    defaults = dict(steps=pick(10, 250, 20_000, profile=profile), batch_size=pick(16, 16, 64, profile=profile),
                    lr=pick(3e-3, 3e-3, 5e-4, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                    cosine=True, log_every=pick(5, 25, 100, profile=profile),
                    max_seconds=pick(None, 60.0, None, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_photo_priors(model: VQVAE2, top: torch.Tensor, bottom: torch.Tensor, profile: str | None = None,
                       test: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[PixelCNN, BottomPrior, dict]:
    """Stages 2 and 3: a PixelCNN over the top codes, then a GPT over the bottom codes given the top.

    top (N, ht, wt) and bottom (N, h, w) are the training codes (``model.encode``); ``test`` adds
    held-out bits per code to the histories. Both priors are cached, keyed by the codes.
    Returns (top prior, bottom prior, {"top": History, "bottom": History}).
    """
    k = model.config.codebook_size
    config = prior_train_config(profile)
    top_prior = PixelCNN(PixelCNNConfig.for_profile(k, profile=profile))
    top_history = train_prior(top_prior, top, config, "photo-top-prior",
                              test=None if test is None else (test[0], None))
    small = pick(smoke={}, quick=dict(n_layer=2, n_head=2, n_embd=64), full={}, profile=profile)  # 320 tokens on a CPU
    gpt_config = GPTConfig.for_profile(k, block_size=top[0].numel() + bottom[0].numel(), profile=profile, **small)
    bottom_prior = BottomPrior(gpt_config, top.shape[1:], bottom.shape[1:])
    bottom_history = train_prior(bottom_prior, bottom, config, "photo-bottom-prior", cond=top,
                                 test=None if test is None else (test[1], test[0]))
    return top_prior, bottom_prior, {"top": top_history, "bottom": bottom_history}

"""Chapter 4: VQ-VAE-2 on photographs, next to a one-level VQ-VAE with the same code bits, and the priors of both.

What is in it: ``train_photo_vqvae2`` (the two-level model of ``vqlib.tokenizers.vqvae2``),
``train_photo_vqvae`` (the one-level baseline: a chapter 2 VQ-VAE at factor 4 whose codebook gets the
two-level model's code bits, ``equal_bits_codebook_size``), both trained by ``fit_on_photos`` on
``photos("train")`` crops of ``image_size`` and scored as they train on ``photos("val")``
(``image_scores``: PSNR and SSIM; ``per_image_scores`` gives one number per image); ``train_photo_priors``
(stage 2, a GPT over the top codes, ``train_map_prior``; stage 3, a ``BottomPrior`` GPT over the bottom codes
given the top, ``train_bottom_prior``) and ``train_baseline_prior`` (``train_map_prior`` over the baseline's
codes: the same size and budget); ``sample_two_levels`` and ``sample_one_level``;
``position_dependence`` (which earlier codes a GPT's prediction can see); ``spectrum_features`` (the
feature space of the samples' Fréchet distance). Every recipe takes a training ``seed``
(initialisation and batch order; the chapter trains every model with three), trains once per
profile, config and seed, then loads from the checkpoint cache.

Dimension key: N examples, C image channels, H W image height and width, h w bottom code map,
ht wt top code map, L tokens, K codebook size.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import evaluating, reconstruct
from vqlib.core.metrics import psnr, ssim
from vqlib.core.profile import pick, seed_everything
from vqlib.data.photos import photos
from vqlib.judges.realism import band_power
from vqlib.recipes.ch03_priors import train_prior
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, vqvae_loss
from vqlib.tokenizers.vqvae2 import VQVAE2, BottomPrior, VQVAE2Config, equal_bits_codebook_size
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit, split_overrides


def per_image_scores(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR (dB) and SSIM of each image: x, x_hat (N, C, H, W) in [0, 1] -> {"psnr": (N,), "ssim": (N,)}.

    Their means are ``psnr(x, x_hat)`` and ``ssim(x, x_hat)``; per image, two models scored on the
    same images give a paired ``bootstrap_ci``.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    psnr(x, x_hat)  # checks the shapes and finiteness
    ssim_each = structural_similarity_index_measure(x_hat.float(), x.float(), data_range=1.0, reduction="none")
    return {"psnr": psnr(x, x_hat, reduction="none"), "ssim": ssim_each.reshape(len(x))}


def image_scores(model: nn.Module, data: TensorDataset) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of a model's reconstructions of ``data`` (training-time evaluation on val)."""
    x = data.tensors[0]
    return {k: float(v.mean()) for k, v in per_image_scores(x, reconstruct(model, x)).items()}


def spectrum_features(x: torch.Tensor) -> torch.Tensor:
    """The feature space of chapter 4's Fréchet distance: each image's log power in 4 rings of frequency.

    x (N, 3, H, W) in [0, 1] -> (N, 4) (``vqlib.judges.realism.band_power``). Nothing is trained; the
    chapter shows that distances in it rank known distortions before it scores samples.
    """
    return band_power(x).log().float()


def image_size(profile: str | None = None) -> int:
    """The side of chapter 4's crops: 32 in smoke and quick (a 4×4 top and an 8×8 bottom code map), 128 in full.

    32 pixels keep three training seeds of both autoencoders and of the three priors within the
    chapter's 3 minutes on a 2-core CPU.
    """
    return pick(32, 32, 128, profile=profile)


def photo_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of the chapter 4 autoencoders (both get the same), in steps; ``seed`` picks a run.

    ``quick`` is sized so that chapter 4, with three seeds of both autoencoders and of the three
    priors, runs within 3 minutes on a 2-core CPU. Its 600 steps were chosen on validation crops,
    seeds 0-2: at 400, the two-level model's validation PSNR ranged over 1.4 dB between the seeds
    and another crop's top codes cost one seed only 0.6 dB; at 600, 21.1-21.7 dB and 2.8-5.3 dB.
    """
    defaults = dict(steps=pick(10, 600, 30_000, profile=profile), batch_size=pick(16, 16, 128, profile=profile),
                    lr=pick(2e-3, 2e-3, 3e-4, profile=profile), cosine=True,
                    log_every=pick(5, 25, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def fit_on_photos(name: str, model: nn.Module, loss_fn, train_config: TrainConfig,
                  profile: str | None = None) -> History:
    """Train an autoencoder on ``photos("train")`` crops of ``image_size`` (or load it from the cache), scored on
    ``photos("val")``."""
    size = image_size(profile)
    val, train = photos("val", size, profile), photos("train", size, profile)
    return fit(model, loss_fn, train, train_config, eval_fn=lambda m: image_scores(m, val),
               checkpoint=checkpoint_path(name, model.config, train_config, data=train, profile=profile))


def train_photo_vqvae2(profile: str | None = None, **overrides) -> tuple[VQVAE2, History]:
    """The chapter 4 VQ-VAE-2 on photographs, trained once per profile and config, then cached.

    ``overrides`` set fields of VQVAE2Config or TrainConfig. Returns the model in eval mode and its
    History (with validation PSNR and SSIM).
    """
    model_overrides, train_overrides = split_overrides(overrides, VQVAE2Config)
    train_config = photo_train_config(profile, **train_overrides)
    seed_everything(train_config.seed)
    model = VQVAE2(VQVAE2Config.for_profile(profile, **model_overrides))
    return model, fit_on_photos("photo-vqvae2", model, vqvae_loss, train_config, profile)  # mse + both VQ losses


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
    """The training budget of each chapter 4 prior (the same for all three)."""
    defaults = dict(steps=pick(10, 200, 20_000, profile=profile), batch_size=pick(16, 16, 64, profile=profile),
                    lr=pick(3e-3, 3e-3, 5e-4, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                    cosine=True, log_every=pick(5, 25, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def prior_config(vocab_size: int, block_size: int, profile: str | None = None) -> GPTConfig:
    """The GPT of every chapter 4 prior: one size class, so the priors of both systems are comparable."""
    small = pick(smoke={}, quick=dict(n_layer=2, n_head=2, n_embd=64), full={}, profile=profile)  # 384 tokens, CPU
    return GPTConfig.for_profile(vocab_size, block_size=block_size, profile=profile, **small)


def train_photo_priors(model: VQVAE2, top: torch.Tensor, bottom: torch.Tensor, profile: str | None = None,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None,
                       seed: int = 0) -> tuple[GPT, BottomPrior, dict]:
    """Stages 2 and 3: a GPT over the top codes in raster order, then a GPT over the bottom codes given the top.

    top (N, ht, wt) and bottom (N, h, w) are the training codes (``model.encode``); ``val`` = the (top,
    bottom) codes of ``photos("val")`` adds validation bits per code to the histories; ``seed`` sets
    both priors' initialisation and batch order. The top prior reads a map flattened, (N, ht·wt):
    attention lets its last position see every earlier one. Both priors are cached, keyed by the codes.
    Returns (top prior, bottom prior, {"top": History, "bottom": History}).
    """
    top_prior, top_history = train_map_prior("photo-top-prior", top, model.config.codebook_size, profile,
                                             None if val is None else val[0], seed)
    bottom_prior, bottom_history = train_bottom_prior(model, top, bottom, profile, val, seed)
    return top_prior, bottom_prior, {"top": top_history, "bottom": bottom_history}


def train_bottom_prior(model: VQVAE2, top: torch.Tensor, bottom: torch.Tensor, profile: str | None = None,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None,
                       seed: int = 0) -> tuple[BottomPrior, History]:
    """Stage 3 alone, with a training ``seed`` (initialisation and batch order): the bottom prior given the top.

    Arguments as ``train_photo_priors``; another seed trains (and caches) another prior.
    """
    k_top, k_bottom = model.config.codebook_size, model.config.bottom_codebook_size
    config = prior_train_config(profile, seed=seed)
    seed_everything(seed)
    gpt_config = prior_config(k_top + k_bottom, 6 * top[0].numel(), profile)  # the top map, then 5 tokens per top code
    prior = BottomPrior(gpt_config, top.shape[1:], (k_top, k_bottom))
    history = train_prior(prior, bottom, config, "photo-bottom-prior", cond=top,
                          test=None if val is None else (val[1], val[0]))
    return prior, history


def train_map_prior(name: str, codes: torch.Tensor, codebook_size: int, profile: str | None = None,
                    val: torch.Tensor | None = None, seed: int = 0) -> tuple[GPT, History]:
    """A GPT over code maps (N, h, w) in raster order, of the chapter's prior size and budget, cached as ``name``.

    ``val``: validation codes (N', h, w), whose bits per code the history records; ``seed``: the
    initialisation and batch order. Cached, keyed by the codes.
    """
    config = prior_train_config(profile, seed=seed)
    seed_everything(seed)
    prior = GPT(prior_config(codebook_size, codes[0].numel(), profile))
    history = train_prior(prior, codes.flatten(1), config, name, test=None if val is None else (val.flatten(1), None))
    return prior, history


def train_baseline_prior(baseline: VQVAE, codes: torch.Tensor, profile: str | None = None,
                         val: torch.Tensor | None = None, seed: int = 0) -> tuple[GPT, History]:
    """The one-level baseline's prior: ``train_map_prior`` over its codes (N, h, w), the top prior's size and budget."""
    return train_map_prior("photo-baseline-prior", codes, baseline.config.codebook_size, profile, val, seed)


@torch.no_grad()
def sample_two_levels(model: VQVAE2, top_prior: GPT, bottom_prior: BottomPrior, n: int,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ancestral sampling, top first: n top maps, a bottom map for each, decoded.

    Returns (images (n, C, H, W) in [0, 1], top (n, ht, wt), bottom (n, h, w)), all on the CPU.
    """
    shape = bottom_prior.top_shape
    top = top_prior.sample(n, math.prod(shape), temperature=temperature).view(n, *shape)  # (n, ht, wt)
    bottom = bottom_prior.sample(top, temperature=temperature)  # (n, h, w)
    return model.decode((top, bottom)).clamp(0, 1).cpu(), top.cpu(), bottom.cpu()


@torch.no_grad()
def sample_one_level(baseline: VQVAE, prior: GPT, shape: tuple[int, int], n: int,
                     temperature: float = 1.0) -> torch.Tensor:
    """n code maps of ``shape`` (h, w) from the baseline's prior, decoded: images (n, C, H, W) in [0, 1] on the CPU."""
    codes = prior.sample(n, math.prod(shape), temperature=temperature).view(n, *shape)  # (n, h, w)
    return baseline.decode(codes).clamp(0, 1).cpu()


def position_dependence(gpt: GPT, tokens: torch.Tensor, t: int) -> torch.Tensor:
    """How much the logits that predict token t depend on each input token: tokens (1, L) -> (L,).

    The summed absolute gradient of those logits with respect to each token's embedding, taken on a
    forward hook of the token embedding: 0 where the prediction cannot see the token. A causal
    prior sees tokens 0..t-1 and nothing else; a receptive field that misses an earlier token shows
    a 0 there.
    """
    if tokens.dim() != 2 or len(tokens) != 1 or not 1 <= t < tokens.shape[1]:
        raise ValueError(f"expected one sequence (1, L) and 1 <= t < L, got {tuple(tokens.shape)} and t={t}")
    embedded = []  # the token embeddings (1, L, C) of the forward pass
    hook = gpt.tok_emb.register_forward_hook(lambda module, args, out: embedded.append(out))
    try:
        with evaluating(gpt), torch.enable_grad():
            logits = gpt(to_device(tokens, model_device(gpt)))[0, t - 1]  # (K,): row t-1 predicts token t
            (grad,) = torch.autograd.grad(logits.abs().sum(), embedded[0])  # (1, L, C); no parameter gets a .grad
    finally:
        hook.remove()
    return grad[0].abs().sum(-1).cpu()  # (L,)

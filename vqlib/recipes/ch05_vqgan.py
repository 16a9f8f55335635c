"""Chapter 5: the VQGAN recipes: one VQ-VAE, its decoder fine-tuned two ways at the same codes, and the scores.

The demonstration of the chapter: ``train_photo_vqvae`` trains one VQ-VAE (squared error + VQ loss,
VQGAN's network) on ``photos("train")`` crops; ``fine_tune_decoder`` copies it with its encoder and
codebook frozen (``vqlib.tokenizers.vqgan.FrozenCodes``: every crop keeps exactly its codes) and
trains only the decoder for the same number of steps with one of two ``OBJECTIVES``: ``"mse"``
(squared error again, the control) or ``"vqgan"`` (L1 + hinge PatchGAN with the adaptive weight λ,
``vqlib.losses.vqgan``). The decoder starts from a converged VQ-VAE, so the discriminator joins at
once: the VQ-VAE's training is the warm-up. ``train_photo_vqgan`` and ``train_photo_vqgan_baseline``
are the two fine-tunes of the shared VQ-VAE by name.

How ``"vqgan"`` differs from the paper's objective, and why (measured on ``photos("val")`` crops,
seeds 0-2, 100 fine-tune steps): the perceptual term is left out (``perceptual_weight=0``), because
with the book's stand-in perceptual network (``vqlib.judges.photonet``, not LPIPS's VGG) it gave the
reconstructions a colour cast (red and green down, blue up), with or without the adversarial term;
without it the mean colour error stayed at the control's. ``disc_weight`` is 1, the
taming-transformers code's default. A head start for the discriminator (``pretrain_steps``, Chapter 5's
Exercise 7) is not used: on the same crops, at 100 fine-tune steps it moved the two-sample accuracy by
less than the test's own run-to-run spread; at 200 steps the adversarial decoder was told apart less
often than the control only when several tests were averaged per seed, and only for some learning
rates of the test's classifier, which is more time than the chapter's budget has and a weaker claim
than the chapter would need.

``held_out_scores`` scores reconstructions of held-out crops with the calibrated judges of
``vqlib.judges.realism`` (spectral error, classifier two-sample test) and PSNR and SSIM, per crop.
The perceptual network (only when a fine-tune sets ``perceptual_weight > 0``) is
``vqlib.judges.photonet``'s, trained on the same crops.

Dimension key: B batch, C channels, H W height and width, h w code map, N examples.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vqlib.core.inference import reconstruct
from vqlib.core.metrics import psnr
from vqlib.core.profile import pick, seed_everything
from vqlib.data.photos import photos
from vqlib.judges.photonet import train_photo_net
from vqlib.judges.realism import spectral_error, two_sample_test
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.losses.vqgan import VQGANLoss, VQGANLossConfig
from vqlib.recipes.ch04_vqvae2 import per_image_scores
from vqlib.tokenizers.vqgan import VQGAN, FrozenCodes, VQGANConfig
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.gan import GANStep, pretrain_discriminator
from vqlib.training.loop import History, TrainConfig, fit, split_overrides

# the two decoder objectives at the same codes: the control, and VQGAN's (L1 + λ·hinge PatchGAN; no perceptual
# term, chosen on validation crops: see the module's docstring)
OBJECTIVES: dict[str, VQGANLossConfig] = {
    "mse": VQGANLossConfig(pixel_loss="mse", perceptual_weight=0.0, disc_weight=0.0),
    "vqgan": VQGANLossConfig(pixel_loss="l1", perceptual_weight=0.0, disc_weight=1.0),
}
SEEDS = (0, 1, 2)  # the fine-tunes' seeds (the discriminator's initialisation and the batches)


def image_size(profile: str | None = None) -> int:
    """The side of chapter 5's crops: 32 in quick (an 8×8 code map), 128 in full (Flowers-102)."""
    return pick(16, 32, 128, profile=profile)


def vqgan_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The shared VQ-VAE's budget (squared error + VQ loss): ``quick`` is sized so that its validation PSNR
    has levelled off and the chapter runs in 3 minutes on two CPU cores; cosine decay of the rate."""
    defaults = dict(steps=pick(8, 500, 40_000, profile=profile), batch_size=pick(8, 16, 32, profile=profile),
                    lr=pick(2e-3, 2e-3, 2e-4, profile=profile), betas=(0.5, 0.99), cosine=True,
                    eval_every=pick(4, 100, 5000, profile=profile), log_every=pick(2, 25, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def fine_tune_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The budget of each decoder fine-tune, the same for both objectives; Adam's betas (0.5, 0.9) as in the
    paper's code, for the decoder and the discriminator."""
    defaults = dict(steps=pick(4, 100, 20_000, profile=profile), batch_size=pick(8, 16, 32, profile=profile),
                    lr=pick(2e-4, 2e-4, 1e-4, profile=profile), betas=(0.5, 0.9), cosine=True,
                    log_every=pick(2, 10, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def weights_digest(module: nn.Module) -> str:
    """A short digest of a module's weights: a checkpoint trained from or against them names them."""
    return data_digest(*module.state_dict().values())


def train_photo_vqvae(profile: str | None = None, **overrides) -> tuple[VQGAN, History]:
    """The chapter's one VQ-VAE: VQGAN's network trained with squared error + VQ loss on ``photos("train")``, cached.

    Scored as it trains by its PSNR on ``photos("val")`` ("psnr"). ``overrides`` set fields of
    VQGANConfig or TrainConfig.
    """
    model_overrides, train_overrides = split_overrides(overrides, VQGANConfig)
    model_config = VQGANConfig.for_profile(profile, **model_overrides)
    train_config = vqgan_train_config(profile, **train_overrides)
    size = image_size(profile)
    train, val = photos("train", size, profile), photos("val", size, profile).tensors[0]
    seed_everything(train_config.seed)
    model = VQGAN(model_config)
    loss_config = OBJECTIVES["mse"]
    history = fit(model, GANStep(VQGANLoss(loss_config, None, None)), train, train_config,
                  eval_fn=lambda m: {"psnr": float(psnr(val, reconstruct(m, val)))},
                  checkpoint=checkpoint_path("photo-vqgan-vqvae", model_config, loss_config, train_config,
                                             data=train, profile=profile))
    return model, history


def fine_tune_decoder(model: VQGAN, objective: str, profile: str | None = None, pretrain_steps: int = 0,
                      **overrides) -> tuple[FrozenCodes, History]:
    """A copy of ``model`` whose decoder alone is trained with ``OBJECTIVES[objective]``, cached.

    The encoder and codebook are frozen (``FrozenCodes``), so the copy gives every crop exactly the
    codes of ``model``; the discriminator joins at step 0 (``model`` is the warm-up). With
    ``pretrain_steps > 0`` the discriminator first trains alone for that many steps against
    ``model``'s fixed reconstructions of the training crops (``vqlib.training.gan.pretrain_discriminator``;
    the fine-tune's batch size, betas and learning rate, held constant), so that the decoder's first
    adversarial gradients come from a discriminator that can already tell them apart (Chapter 5,
    Exercise 7); once the fine-tune has a checkpoint, its discriminator comes from there and the
    pretraining is skipped. ``overrides`` set fields of VQGANLossConfig, PatchGANConfig or TrainConfig (e.g.
    ``seed=1``, which also seeds the pretraining); ``perceptual_weight > 0`` adds the perceptual term
    with the network of ``vqlib.judges.photonet`` trained on the same crops. Scored as it trains by
    its PSNR on ``photos("val")``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: expected one of {sorted(OBJECTIVES)}")
    loss_overrides, disc_overrides, train_overrides = split_overrides(overrides, VQGANLossConfig, PatchGANConfig)
    size = image_size(profile)
    loss_config = dataclasses.replace(OBJECTIVES[objective], **loss_overrides)
    if not isinstance(pretrain_steps, int) or pretrain_steps < 0 or (pretrain_steps and not loss_config.disc_weight):
        raise ValueError(f"pretrain_steps must be an int >= 0, and > 0 only with a discriminator (disc_weight > 0), "
                         f"got {pretrain_steps!r} for {objective!r} with disc_weight {loss_config.disc_weight:g}")
    train_config = fine_tune_train_config(profile, **train_overrides)
    perceptual = PerceptualLoss(train_photo_net(size, profile)[0]) if loss_config.perceptual_weight > 0 else None
    seed_everything(train_config.seed)
    disc_config = PatchGANConfig.for_profile(profile, **disc_overrides)
    disc = PatchGAN(disc_config) if loss_config.disc_weight > 0 else None
    criterion = VQGANLoss(loss_config, disc, perceptual)
    tuned = FrozenCodes.of(model)
    train, val = photos("train", size, profile), photos("val", size, profile).tensors[0]
    model_digest = weights_digest(model)
    key = {"from": model_digest, "disc": dataclasses.asdict(disc_config) if disc else None,
           "perceptual": weights_digest(perceptual.net) if perceptual else None}
    pretrain = dataclasses.replace(train_config, steps=pretrain_steps, cosine=False, warmup_steps=0,
                                   eval_every=0) if pretrain_steps else None
    if pretrain:
        key["pretrain"] = dataclasses.asdict(pretrain)
    checkpoint = checkpoint_path(f"photo-vqgan-decoder-{objective}", model.config, loss_config, train_config, key,
                                 data=train, profile=profile)
    if pretrain and not checkpoint.exists():  # a fine-tune's checkpoint holds its discriminator, pretrained
        crops = train.tensors[0]
        pretrain_discriminator(criterion, crops, reconstruct(model, crops), pretrain,
                               checkpoint=checkpoint_path("photo-vqgan-disc-pretrain", disc_config, pretrain,
                                                          {"from": model_digest}, data=train, profile=profile))
    history = fit(tuned, GANStep(criterion), train, train_config,
                  eval_fn=lambda m: {"psnr": float(psnr(val, reconstruct(m, val)))}, checkpoint=checkpoint)
    return tuned, history


def train_photo_vqgan(profile: str | None = None, **overrides) -> tuple[FrozenCodes, History]:
    """The shared VQ-VAE's decoder fine-tuned with the VQGAN objective (``fine_tune_decoder(..., "vqgan")``)."""
    return fine_tune_decoder(train_photo_vqvae(profile)[0], "vqgan", profile, **overrides)


def train_photo_vqgan_baseline(profile: str | None = None, **overrides) -> tuple[FrozenCodes, History]:
    """The control: the shared VQ-VAE's decoder fine-tuned with squared error for the same steps."""
    return fine_tune_decoder(train_photo_vqvae(profile)[0], "mse", profile, **overrides)


def held_out_scores(x: torch.Tensor, x_hat: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per crop: PSNR (dB), SSIM, spectral error and the two-sample test's scores, for x, x_hat (N, 3, H, W).

    ``"psnr"``, ``"ssim"``, ``"spectral"`` are (N,) (``vqlib.judges.realism.spectral_error``: 0 is the
    originals' spectrum). ``"two_sample"`` and ``"divergence"`` are (M,), for each of the M held-out
    images of ``two_sample_test(x, x_hat, seed)``: whether its classifier was right (0/1; mean: the
    accuracy, 0.5 = indistinguishable) and its share of the divergence bound (mean: the bound in bits).
    The test's halves depend only on ``seed`` and N, so two models scored with the same seed are paired.
    """
    x_hat = x_hat.clamp(0, 1)
    test = two_sample_test(x, x_hat, seed=seed)
    return {**per_image_scores(x, x_hat), "spectral": spectral_error(x_hat, x).float(),
            "two_sample": test.hits.float(), "divergence": test.bits.float()}

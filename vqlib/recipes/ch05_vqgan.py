"""Chapter 5: the VQGAN recipes: scores, training budgets, and the cached models of the chapter.

The objective is ``vqlib.losses.vqgan`` (pixel, perceptual and adversarial losses, the adaptive
weight λ); the two-optimiser training step is ``vqlib.training.gan.GANStep``, trained by the one
loop, ``vqlib.training.loop.fit``.

What is in it: ``reconstruction_scores`` (PSNR, SSIM, Fréchet distance), ``frechet_ci`` (a paired
bootstrap interval of the difference of two models' Fréchet distances over the same crops),
``vqgan_train_config`` and ``vqgan_loss_config`` (the chapter's budgets and warm-up), and the cached
recipes: ``train_photo_vqgan`` (any variant, by overrides), ``train_photo_vqgan_baseline`` (the VQ-VAE
objective on the same network) and ``train_vqgan_prior`` (a class-conditional GPT over the codes).

Dimension key: B batch, C channels, H W height and width, h w code map, N examples, F features.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.inference import in_batches, reconstruct
from vqlib.core.metrics import Interval, bootstrap_ci, frechet_distance
from vqlib.core.profile import pick, seed_everything
from vqlib.data.photos import TRAIN_PHOTOS
from vqlib.judges.photonet import embed_images, labelled_crops, train_photo_net
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.losses.vqgan import VQGANLoss, VQGANLossConfig
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.recipes.ch03_priors import train_prior
from vqlib.recipes.ch04_vqvae2 import per_image_scores
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.gan import GANStep
from vqlib.training.loop import History, TrainConfig, fit


# ----------------------------------------------------------------------------- scores and recipes

def reconstruction_scores(x: torch.Tensor, x_hat: torch.Tensor, judge: nn.Module) -> dict[str, float]:
    """Mean PSNR (dB), mean SSIM and the Fréchet distance between ``judge`` features of x and x_hat (N, C, H, W).

    Per image, PSNR and SSIM are ``vqlib.recipes.ch04_vqvae2.per_image_scores``.
    """
    scores = {k: float(v.mean()) for k, v in per_image_scores(x, x_hat).items()}
    return {**scores, "fd": frechet_distance(embed_images(judge, x_hat), embed_images(judge, x))}


def frechet_ci(feats_a: torch.Tensor, feats_b: torch.Tensor, real: torch.Tensor, n_boot: int = 1000,
               seed: int = 0) -> Interval:
    """Interval of FD(feats_a, real) - FD(feats_b, real), bootstrapped over the crops.

    feats_a, feats_b, real (N, F): features of two models' reconstructions of the same N crops and of
    the crops themselves. Each resample draws N crops with replacement and uses them for all three
    sets (a paired bootstrap, ``bootstrap_ci`` with ``stat=``): crop i of model a is item i, crop i of
    model b item N + i, both compared with real crop i.
    """
    n = len(real)
    if not len(feats_a) == len(feats_b) == n:
        raise ValueError(f"expected features of the same crops, got {len(feats_a)}, {len(feats_b)} and {n} rows")
    pool, real = torch.cat([feats_a, feats_b]).double(), real.double()

    def stat(items: torch.Tensor) -> torch.Tensor:  # (..., N) item numbers -> (...) Fréchet distances
        rows = items.long().reshape(-1, n)
        fds = [frechet_distance(pool[r], real[r % n]) for r in rows]
        return torch.tensor(fds, dtype=torch.float64).reshape(items.shape[:-1])

    return bootstrap_ci(torch.arange(n), torch.arange(n) + n, stat=stat, n_boot=n_boot, seed=seed)


def image_size(profile: str | None = None) -> int:
    """The side of chapter 5's crops: small enough for a CPU, with an 8×8 code map in quick."""
    return pick(16, 32, 128, profile=profile)


def vqgan_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of every chapter 5 autoencoder; Adam's betas (0.5, 0.9) as in the paper's code.

    The learning rate decays (cosine): GAN training ends on a steadier model than at a constant rate.
    ``quick`` is sized in steps so that chapter 5 (three autoencoder runs, two PhotoNets, a prior) runs
    in about 2.5 minutes on a 2-core CPU; ``eval_every`` divides half the steps (the warm-up comparison).
    """
    defaults = dict(steps=pick(8, 240, 40_000, profile=profile), batch_size=pick(8, 16, 32, profile=profile),
                    lr=pick(1e-3, 1e-3, 2e-4, profile=profile), betas=(0.5, 0.9), cosine=True,
                    eval_every=pick(4, 40, 5000, profile=profile), log_every=pick(2, 8, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


WARM_UP = 0.4  # fraction of the steps before the discriminator joins


def vqgan_loss_config(train_config: TrainConfig, **overrides) -> VQGANLossConfig:
    """The chapter 5 losses: the paper's weights, the discriminator joining after ``WARM_UP`` of the steps."""
    return VQGANLossConfig(**{"disc_start": int(train_config.steps * WARM_UP), **overrides})


def weights_digest(module: nn.Module) -> str:
    """A short digest of a module's weights: a checkpoint trained against them names them."""
    return data_digest(*module.state_dict().values())


def train_photo_vqgan(profile: str | None = None, stop_at: int | None = None, **overrides) -> tuple[VQGAN, History]:
    """Chapter 5's VQGAN on ``photos("train")`` crops, scored as it trains on ``photos("val")``, cached.

    ``overrides`` set fields of VQGANConfig, VQGANLossConfig, PatchGANConfig or TrainConfig, e.g.
    ``disc_start=0`` (no warm-up) or ``seed=1``. The perceptual network is ``PhotoNet("photo")``,
    the judge of the evaluations (Fréchet distance "fd") ``PhotoNet("rotation")`` (``vqlib.judges.photonet``).
    ``stop_at``: train only the first steps of that run (see ``vqlib.training.loop.fit``).
    """
    from vqlib.data.photos import photos

    groups = {cls: {f.name for f in dataclasses.fields(cls)}
              for cls in (VQGANConfig, VQGANLossConfig, PatchGANConfig, TrainConfig)}
    unknown = set(overrides) - set().union(*groups.values())
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}: expected fields of "
                        f"{', '.join(c.__name__ for c in groups)}")
    pick_for = {cls: {k: v for k, v in overrides.items() if k in names} for cls, names in groups.items()}
    size = image_size(profile)
    train_config = vqgan_train_config(profile, **pick_for[TrainConfig])
    loss_config = vqgan_loss_config(train_config, **pick_for[VQGANLossConfig])
    model_config = VQGANConfig.for_profile(profile, **pick_for[VQGANConfig])
    judge, _ = train_photo_net("rotation", size, profile=profile)
    perceptual = None
    if loss_config.perceptual_weight > 0:
        perceptual = PerceptualLoss(train_photo_net("photo", size, profile=profile)[0])
    seed_everything(train_config.seed)
    model = VQGAN(model_config)
    disc_config = PatchGANConfig.for_profile(profile, **pick_for[PatchGANConfig])
    disc = PatchGAN(disc_config) if loss_config.disc_weight > 0 else None
    val = photos("val", size=size, profile=profile).tensors[0]
    key = {"disc": dataclasses.asdict(disc_config) if disc else None,
           "perceptual": weights_digest(perceptual.net) if perceptual else None,
           "judge": weights_digest(judge)}
    train = photos("train", size=size, profile=profile)
    history = fit(model, GANStep(VQGANLoss(loss_config, disc, perceptual)), train, train_config,
                  eval_fn=lambda m: reconstruction_scores(val, reconstruct(m, val), judge),
                  checkpoint=checkpoint_path("photo-vqgan", model_config, loss_config, train_config, key,
                                             data=train, profile=profile), stop_at=stop_at)
    return model, history


def train_photo_vqgan_baseline(profile: str | None = None, **overrides) -> tuple[VQGAN, History]:
    """The VQ-VAE objective (squared error + VQ loss) on VQGAN's network: same codes, same budget."""
    return train_photo_vqgan(profile, **{"pixel_loss": "mse", "perceptual_weight": 0.0, "disc_weight": 0.0,
                                         **overrides})


def prior_data(model: VQGAN, profile: str | None = None) -> TensorDataset:
    """Codes of labelled training crops: tokens (N, h·w) long, labels (N,) = index of the photograph."""
    x, labels = labelled_crops(pick(16, 256, 1024, profile=profile), image_size(profile)).tensors
    tokens = in_batches(model.encode, model, x).flatten(1)  # (N, h·w)
    return TensorDataset(tokens, labels)


def train_vqgan_prior(model: VQGAN, profile: str | None = None, **overrides) -> tuple[GPT, History]:
    """A GPT (chapter 3) over the model's codes in raster order, conditioned on the photograph, cached.

    The class of a crop is the training photograph it was cut from (``labelled_crops``).
    ``overrides`` set fields of TrainConfig.
    """
    tokens, labels = prior_data(model, profile).tensors
    gpt_config = GPTConfig.for_profile(model.config.codebook_size, tokens.shape[1], num_classes=len(TRAIN_PHOTOS),
                                       profile=profile)
    config = TrainConfig(**{**dict(steps=pick(6, 200, 20_000, profile=profile), batch_size=pick(8, 32, 64, profile=profile),
                                   lr=pick(3e-3, 3e-3, 5e-4, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                                   cosine=True, log_every=pick(2, 25, 100, profile=profile)), **overrides})
    seed_everything(config.seed)
    gpt = GPT(gpt_config)
    return gpt, train_prior(gpt, tokens, config, "photo-vqgan-prior", cond=labels)

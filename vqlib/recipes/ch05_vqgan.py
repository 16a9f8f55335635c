"""Training VQGAN: pixel, perceptual and adversarial losses, the adaptive weight λ, and the loop.

Paper: Esser, Rombach and Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(CVPR 2021), eq. 5-7. The autoencoder (``vqlib.tokenizers.vqgan``) minimises

    L = L_rec + L_VQ + λ · L_G,      L_rec = |x - x̂|₁ + w_p · d_perceptual(x, x̂)

with the hinge generator loss L_G of a PatchGAN (``vqlib.losses.discriminator``) and the adaptive weight

    λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + δ),   δ = 1e-4, clamped to [0, 10⁴] and not differentiated,

the gradients taken at the decoder's last layer G_L, so that the adversarial term never swamps
the reconstruction. The discriminator, trained with its own hinge loss and optimiser, joins only
after ``disc_start`` steps (the warm-up): before that the autoencoder learns to reconstruct.

What is in it: ``VQGANLossConfig``, ``adaptive_weight``, ``VQGANLoss`` (the discriminator, the
perceptual network, ``generator_terms`` and ``discriminator_terms``), ``fit_vqgan`` (the loop:
two optimisers, resumable atomic checkpoints, NaN/inf guard; the rest as ``vqlib.training.loop.fit``),
``reconstruction_scores`` (PSNR, SSIM, Fréchet distance) and the cached recipes of chapter 5:
``train_photo_vqgan`` (any variant, by overrides), ``train_photo_vqgan_baseline`` (the VQ-VAE
objective on the same network) and ``train_vqgan_prior`` (a class-conditional GPT over the codes).

Left out: ``disc_factor`` (the taming code's second multiplier of λ, 1 by default), multiple
processes (``fit_vqgan`` runs on one device, also under torchrun), mixed precision, and time
budgets (runs stop by steps; a ``TrainConfig`` with ``max_seconds`` is refused).

Dimension key: B batch, C channels, H W height and width, h w code map, N examples, F features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from vqlib.core.cache import atomic_save
from vqlib.core.inference import in_batches
from vqlib.core.metrics import frechet_distance, psnr, ssim
from vqlib.core.profile import default_device, pick, seed_everything
from vqlib.data.photos import TRAIN_PHOTOS
from vqlib.judges.photonet import embed_images, labelled_crops, train_photo_net
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig, discriminator_loss, generator_loss
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.priors.base import train_prior
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.training.checkpoints import checkpoint_meta, checkpoint_path, load_checkpoint
from vqlib.training.loop import (
    History,
    TrainConfig,
    check_finite_terms,
    lr_factor,
    optimizer_step,
    progress_wanted,
    training_batches,
)

PIXEL_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class VQGANLossConfig:
    pixel_loss: str = "l1"  # "l1" (the paper) or "mse" (the VQ-VAE's Gaussian likelihood)
    perceptual_weight: float = 1.0  # w_p (the paper's code: 1.0); 0 = no perceptual term
    disc_weight: float = 1.0  # multiplies λ (the paper's code: 1.0); 0 = no discriminator at all
    disc_start: int = 0  # steps of warm-up before the adversarial term and the discriminator start
    delta: float = 1e-4  # δ in λ's denominator
    max_weight: float = 1e4  # λ is clamped to [0, max_weight]

    def __post_init__(self) -> None:
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {self.pixel_loss!r}")
        if min(self.perceptual_weight, self.disc_weight, self.disc_start) < 0 or not self.delta > 0:
            raise ValueError(f"weights and disc_start must be >= 0 and delta > 0, got {self}")


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    delta: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """λ = ‖∇ rec_loss‖ / (‖∇ gan_loss‖ + δ) at ``last_layer``, clamped to [0, max_weight], detached -> ()."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + delta)).clamp(0.0, max_weight).detach()


class VQGANLoss(nn.Module):
    """Everything VQGAN's autoencoder is judged by: the pixel and perceptual terms, and the PatchGAN.

    ``perceptual`` may be None only when ``config.perceptual_weight`` is 0.
    """

    def __init__(self, config: VQGANLossConfig, discriminator: PatchGAN | None,
                 perceptual: PerceptualLoss | None) -> None:
        super().__init__()
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a PerceptualLoss (see vqlib.losses.perceptual)")
        if config.disc_weight > 0 and discriminator is None:
            raise ValueError("disc_weight > 0 needs a PatchGAN discriminator")
        self.config, self.discriminator, self.perceptual = config, discriminator, perceptual

    def adversarial(self, step: int) -> bool:
        """Whether the adversarial term and the discriminator are on at this (0-based) step."""
        return self.config.disc_weight > 0 and step >= self.config.disc_start

    def generator_terms(self, model: VQGAN, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The autoencoder's loss at ``step`` and its parts; ``"x_hat"`` is returned for the discriminator."""
        out = model(x)
        pixel = F.l1_loss(out.x_hat, x) if self.config.pixel_loss == "l1" else F.mse_loss(out.x_hat, x)
        rec = pixel
        terms = {"pixel": pixel.detach(), "vq": out.loss.detach()}
        if self.config.perceptual_weight > 0:
            perceptual = self.perceptual(x, out.x_hat).mean()
            rec = rec + self.config.perceptual_weight * perceptual
            terms["perceptual"] = perceptual.detach()
        loss = rec + out.loss
        if self.adversarial(step):
            self.discriminator.requires_grad_(False)  # L_G trains the autoencoder only
            try:
                g_loss = generator_loss(self.discriminator(out.x_hat))
            finally:
                self.discriminator.requires_grad_(True)
            lam = adaptive_weight(rec, g_loss, model.last_layer, self.config.delta, self.config.max_weight) \
                if torch.is_grad_enabled() else torch.zeros(())
            loss = loss + self.config.disc_weight * lam * g_loss
            terms |= {"g_loss": g_loss.detach(), "lambda": lam}
        return {"loss": loss, **terms, "x_hat": out.x_hat}

    def discriminator_terms(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's hinge loss on real x and (detached) reconstructions x_hat."""
        logits_real, logits_fake = self.discriminator(x), self.discriminator(x_hat.detach())
        return {"loss": discriminator_loss(logits_real, logits_fake),
                "logits_real": logits_real.mean().detach(), "logits_fake": logits_fake.mean().detach()}


# ----------------------------------------------------------------------------- the loop

def _log(history: History, sums: dict[str, float], counts: dict[str, int]) -> None:
    # terms that exist only after the warm-up are averaged over the steps that had them
    history.train.append({"step": history.steps, **{k: sums[k] / counts[k] for k in sums}})
    sums.clear()
    counts.clear()


def fit_vqgan(model: VQGAN, criterion: VQGANLoss, data: Dataset, config: TrainConfig, *,
              eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
              checkpoint: str | Path | None = None, device: torch.device | str | None = None,
              progress: bool | None = None, stop_at: int | None = None) -> History:
    """Train ``model`` against ``criterion`` in place; the loop of ``vqlib.training.loop.fit`` with two optimisers.

    Each step updates the autoencoder, then (after the warm-up) the discriminator on the same batch
    and the same reconstructions. History: the train records hold the loss terms (with "lambda",
    "g_loss", "d_loss" after the warm-up), the eval records ``eval_fn``'s metrics. ``stop_at``:
    train only the first ``stop_at`` steps of the run that ``config`` describes (same learning-rate
    schedule); the checkpoint stays resumable.
    """
    if not isinstance(config, TrainConfig) or config.max_seconds is not None:
        raise ValueError("config must be a TrainConfig without max_seconds: fit_vqgan stops by steps only, "
                         f"got {config!r}")
    end = config.steps if stop_at is None else min(config.steps, stop_at)
    device = torch.device(device) if device is not None else default_device()  # as fit: CUDA where there is one
    model.to(device).train()
    criterion.to(device).train()
    disc = criterion.discriminator
    opt_g = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor(config))
    opt_d = sched_d = None
    if disc is not None:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        factor = lr_factor(config)  # stepped only with opt_d, so it starts counting at disc_start
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lambda s: factor(s + criterion.config.disc_start))
    history = History()
    meta = {**checkpoint_meta(model, config), "loss_config": dataclasses.asdict(criterion.config)}

    if checkpoint is not None and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint, model, config)
        if ckpt["meta"].get("loss_config") != meta["loss_config"]:
            raise ValueError(f"checkpoint {checkpoint} was written with the loss config {ckpt['meta'].get('loss_config')}, "
                             f"expected {meta['loss_config']}: use another path, or delete it to retrain")
        opt_g.load_state_dict(ckpt["optimizer"])
        sched_g.load_state_dict(ckpt["scheduler"])
        if disc is not None:
            disc.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["optimizer_d"])
            sched_d.load_state_dict(ckpt["scheduler_d"])
        history = History(**ckpt["history"])
        model.to(device)
        criterion.to(device)

    def save() -> None:
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": opt_g.state_dict(), "scheduler": sched_g.state_dict(),
                     "history": dataclasses.asdict(history), "meta": meta}
            if disc is not None:
                state |= {"discriminator": disc.state_dict(), "optimizer_d": opt_d.state_dict(),
                          "scheduler_d": sched_d.state_dict()}
            atomic_save(state, checkpoint)

    if history.steps >= end:
        model.eval()
        return history

    bar = None
    if progress if progress is not None else progress_wanted():
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=history.steps, desc="VQGAN", leave=True)
    started, seconds_before = time.perf_counter(), history.seconds
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    batches = training_batches(data, config.batch_size, config.seed, history.steps)
    torch.manual_seed(config.seed + history.steps)  # restarts of dead codes repeat on resume
    history.stopped = ""
    try:
        for step in range(history.steps, end):
            x = next(batches)[0].to(device)
            terms = criterion.generator_terms(model, x, step)
            x_hat = terms.pop("x_hat")
            check_finite_terms(terms, step)
            optimizer_step(terms["loss"], opt_g, sched_g, model.parameters(), config.grad_clip)
            if disc is not None:
                if criterion.adversarial(step):
                    d_terms = criterion.discriminator_terms(x, x_hat)
                    check_finite_terms(d_terms, step)
                    optimizer_step(d_terms["loss"], opt_d, sched_d)
                    terms |= {"d_loss": d_terms["loss"].detach(), "logits_real": d_terms["logits_real"],
                              "logits_fake": d_terms["logits_fake"]}
            history.steps = step + 1
            history.seconds = seconds_before + time.perf_counter() - started
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
                counts[k] = counts.get(k, 0) + 1
            last = history.steps == end
            if counts.get("loss") == config.log_every or last:
                _log(history, sums, counts)
            if last:
                history.stopped = "steps" if end == config.steps else "stop_at"
            if eval_fn is not None and (last or (config.eval_every and history.steps % config.eval_every == 0)):
                was_training = model.training
                model.eval()
                with torch.no_grad():
                    history.eval.append({"step": history.steps, **{k: float(v) for k, v in eval_fn(model).items()}})
                model.train(was_training)
            if last or history.steps % config.checkpoint_every == 0:
                save()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if bar is None:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in history.train[-1].items() if k != "step")
        print(f"VQGAN: {history.steps} steps in {history.seconds:.0f} s; last train {summary}")
    model.eval()
    return history


# ----------------------------------------------------------------------------- scores and recipes

def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reconstructions of x (N, C, H, W), clipped to [0, 1], on the CPU."""
    return in_batches(lambda b: model(b).x_hat.clamp(0, 1), model, x, 256)


def reconstruction_scores(x: torch.Tensor, x_hat: torch.Tensor, judge: nn.Module) -> dict[str, float]:
    """PSNR (dB), SSIM and the Fréchet distance between ``judge`` features of x and x_hat (N, C, H, W)."""
    return {"psnr": float(psnr(x, x_hat)), "ssim": float(ssim(x, x_hat)),
            "fd": frechet_distance(embed_images(judge, x_hat), embed_images(judge, x))}


def image_size(profile: str | None = None) -> int:
    """The side of chapter 5's crops: small enough for a CPU, with an 8×8 code map in quick."""
    return pick(16, 32, 128, profile=profile)


def vqgan_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of every chapter 5 autoencoder; Adam's betas (0.5, 0.9) as in the paper's code.

    The learning rate decays (cosine): GAN training ends on a steadier model than at a constant rate.
    """
    defaults = dict(steps=pick(8, 500, 40_000, profile=profile), batch_size=pick(8, 16, 32, profile=profile),
                    lr=pick(1e-3, 1e-3, 2e-4, profile=profile), betas=(0.5, 0.9), cosine=True,
                    eval_every=pick(4, 50, 5000, profile=profile), log_every=pick(2, 10, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


WARM_UP = 0.4  # fraction of the steps before the discriminator joins


def vqgan_loss_config(train_config: TrainConfig, **overrides) -> VQGANLossConfig:
    """The chapter 5 losses: the paper's weights, the discriminator joining after ``WARM_UP`` of the steps."""
    return VQGANLossConfig(**{"disc_start": int(train_config.steps * WARM_UP), **overrides})


def digest(module: nn.Module) -> str:
    """A short hash of a module's weights: a checkpoint trained against them names them."""
    blob = b"".join(t.detach().cpu().numpy().tobytes() for t in module.state_dict().values())
    return hashlib.sha256(blob).hexdigest()[:16]


def train_photo_vqgan(profile: str | None = None, stop_at: int | None = None, **overrides) -> tuple[VQGAN, History]:
    """Chapter 5's VQGAN on ``photos("train")`` crops, scored on ``photos("test")``, cached.

    ``overrides`` set fields of VQGANConfig, VQGANLossConfig, PatchGANConfig or TrainConfig, e.g.
    ``disc_start=0`` (no warm-up) or ``seed=1``. The perceptual network is ``PhotoNet("photo")``,
    the judge of the evaluations (Fréchet distance "fd") ``PhotoNet("rotation")`` (``vqlib.judges.photonet``).
    ``stop_at``: train only the first steps of that run (see ``fit_vqgan``).
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
    test = photos("test", size=size, profile=profile).tensors[0]
    key = {"disc": dataclasses.asdict(disc_config) if disc else None,
           "perceptual": digest(perceptual.net) if perceptual else None, "judge": digest(judge)}
    history = fit_vqgan(model, VQGANLoss(loss_config, disc, perceptual), photos("train", size=size, profile=profile),
                        train_config, eval_fn=lambda m: reconstruction_scores(test, reconstruct(m, test), judge),
                        checkpoint=checkpoint_path("photo-vqgan", model_config, loss_config, train_config, key,
                                                   profile=profile), stop_at=stop_at)
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
    config = TrainConfig(**{**dict(steps=pick(6, 300, 20_000, profile=profile), batch_size=pick(8, 32, 64, profile=profile),
                                   lr=pick(3e-3, 3e-3, 5e-4, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                                   cosine=True, log_every=pick(2, 25, 100, profile=profile)), **overrides})
    seed_everything(config.seed)
    gpt = GPT(gpt_config)
    return gpt, train_prior(gpt, tokens, config, "photo-vqgan-prior", cond=labels)

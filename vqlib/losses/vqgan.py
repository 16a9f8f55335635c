"""VQGAN's objective: pixel, perceptual and adversarial losses, and the adaptive weight λ.

Paper: Esser, Rombach and Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(CVPR 2021), eq. 5-7. The autoencoder (``vqlib.tokenizers.vqgan``) minimises

    L = L_rec + L_VQ + λ · L_G,      L_rec = |x - x̂|₁ + w_p · d_perceptual(x, x̂)

with the hinge generator loss L_G of a PatchGAN (``vqlib.losses.discriminator``) and the adaptive weight

    λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + δ),   clamped to [0, 10⁴] and not differentiated,

the gradients taken at the decoder's last layer G_L, so that the adversarial term never swamps
the reconstruction. The paper writes δ = 10⁻⁶; the released taming-transformers code uses
``torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)``, and so does this module (``delta=1e-4``). The discriminator, trained with its own hinge loss, joins only after
``disc_start`` steps (the warm-up): before that the autoencoder learns to reconstruct.

What is in it: ``VQGANLossConfig``, ``adaptive_weight`` and ``VQGANLoss`` (the discriminator, the
perceptual network, ``generator_terms`` and ``discriminator_terms``). The training step that
updates the two networks with two optimisers is ``vqlib.training.gan.GANStep``.

Left out: ``disc_factor`` (the taming code's second multiplier of λ, 1 by default).

Dimension key: B batch, C channels, H W height and width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.losses.discriminator import PatchGAN, discriminator_loss, generator_loss
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.tokenizers.vqgan import VQGAN

PIXEL_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class VQGANLossConfig:
    pixel_loss: str = "l1"  # "l1" (the paper) or "mse" (the VQ-VAE's Gaussian likelihood)
    perceptual_weight: float = 1.0  # w_p (the paper's code: 1.0); 0 = no perceptual term
    disc_weight: float = 1.0  # multiplies λ (the paper's code: 1.0); 0 = no discriminator at all
    disc_start: int = 0  # steps of warm-up before the adversarial term and the discriminator start
    delta: float = 1e-4  # δ in λ's denominator: the released code's (the paper writes 1e-6)
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
                g_loss = generator_loss(self.scores(x, out.x_hat)[1])
            finally:
                self.discriminator.requires_grad_(True)
            lam = adaptive_weight(rec, g_loss, model.last_layer, self.config.delta, self.config.max_weight) \
                if torch.is_grad_enabled() else g_loss.new_zeros(())
            loss = loss + self.config.disc_weight * lam * g_loss
            terms |= {"g_loss": g_loss.detach(), "lambda": lam}
        return {"loss": loss, **terms, "x_hat": out.x_hat}

    def scores(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's logits of real x and of x_hat, from ONE batch of both.

        Its BatchNorm then normalises real and reconstructed crops with the same statistics. Two
        separate batches would each be normalised to the same mean and spread of every feature, hiding
        from the discriminator any defect that all reconstructions share (a colour cast, speckle).
        """
        logits = self.discriminator(torch.cat([x, x_hat]))  # (2B, 1, h, w)
        return logits[:len(x)], logits[len(x):]

    def discriminator_terms(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's hinge loss on real x and (detached) reconstructions x_hat."""
        logits_real, logits_fake = self.scores(x, x_hat.detach())
        return {"loss": discriminator_loss(logits_real, logits_fake),
                "logits_real": logits_real.mean().detach(), "logits_fake": logits_fake.mean().detach()}

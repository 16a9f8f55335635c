"""The variational autoencoder (Kingma & Welling, 2014, "Auto-Encoding Variational Bayes").

What is in it:

- ``VAE``: an MLP encoder q(z|x) = N(mu, diag exp(logvar)), a standard normal prior p(z) = N(0, I),
  and an MLP decoder p(x|z) that outputs Bernoulli logits, one per pixel.
- ``reparameterize``: z = mu + sigma * eps, the trick that lets gradients reach the encoder.
- ``gaussian_kl``: the closed-form KL(q(z|x) || p(z)) per example (and ``kl_per_dim`` per latent).
- ``elbo_terms`` / ``negative_elbo``: reconstruction and KL in nats per image, with a weight ``beta``
  on the KL (the beta-VAE of Higgins et al., 2017); beta = 1 is the true negative ELBO.
- ``Autoencoder``: the same encoder and decoder with no noise and no KL: the deterministic baseline.
- ``active_units`` (Burda et al., 2016) to measure posterior collapse, and
  ``importance_log_likelihood``, the importance-weighted estimate of log p(x) (Burda et al., 2016).
- ``vae_scores`` (per image) / ``evaluate_vae`` (means) / ``evaluate_autoencoder``: held-out nats per
  image and PSNR.

The recipes that train these models on MNIST are in ``vqlib.recipes.ch01_vae``.

Left out: convolutional encoders and decoders (Chapter 2 has them), Gaussian decoders with a
learned variance, richer posteriors (normalising flows), autoregressive decoders, and the
remedies for posterior collapse (KL annealing, free bits), which are exercises of Chapter 1.

The likelihood. The decoder is a product of independent Bernoullis, one per pixel. MNIST pixels
are grey levels in [0, 1], not bits, so we read a grey image x as the distribution of a random
binarisation b ~ Bernoulli(x) (each pixel on with probability x). The binary cross-entropy with
grey targets, sum_i x_i log p_i + (1 - x_i) log(1 - p_i), is exactly E_b[log p(b|z)], and the
"ELBO" computed with it is a true lower bound on E_b[log p(b)]: the expected log-likelihood of a
random binarisation of the digit, which is what training maximises. For a *fixed* binary image b
(``vqlib.data.mnist.binarize``) the same functions give bounds on log p(b) itself: the ELBO, and
``importance_log_likelihood``, which tends to log p(b) as its samples grow. On grey targets the
importance-weighted number does not tend to any log-likelihood (the expectation over b sits inside
its log), which is why Chapter 1 reports its likelihoods on binarised test digits.

Dimension key: B batch, C channels, H W height and width, D latent dimensions (``latent_dim``),
K importance samples, N examples in a dataset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import model_device, to_device
from vqlib.core.nn import check_dtype
from vqlib.core.profile import pick

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 20  # D; Kingma & Welling (2014) ran 2 to 200 on MNIST
    hidden: tuple[int, ...] = (500,)  # MLP widths, input side first; the decoder mirrors them. K&W: one layer of 500
    in_channels: int = 1  # C
    image_size: int = 28  # H = W

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.in_channels < 1 or self.image_size < 1:
            raise ValueError(f"latent_dim, in_channels and image_size must be >= 1, got {self}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must list at least one width >= 1, got {self.hidden}")

    @property
    def in_features(self) -> int:
        return self.in_channels * self.image_size**2  # C·H·W, the flattened image

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "VAEConfig":
        """The MNIST config sized for ``profile`` (default: the current one); ``overrides`` replace fields."""
        hidden = pick(smoke=(32,), quick=(500,), full=(500,), profile=profile)
        return dataclasses.replace(cls(hidden=hidden), **overrides)


# ----------------------------------------------------------------------------- checks


def check_images(x: torch.Tensor, config: VAEConfig, dtype: torch.dtype | None = None) -> None:
    """Raise an error a student can act on unless x is a non-empty (B, C, H, W) float batch in [0, 1]
    (of the weights' ``dtype``, when given)."""
    c, s = config.in_channels, config.image_size
    if not torch.is_tensor(x):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1:] != (c, s, s):
        raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}"
                         + (" (add a channel axis with x.unsqueeze(1))" if x.dim() == 3 else ""))
    if x.shape[0] == 0:
        raise ValueError("expected a non-empty batch, got 0 images")
    if not x.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype} (use x.float() / 255)")
    check_dtype(x, dtype)
    if not torch.isfinite(x).all():
        raise ValueError("the images contain NaN or inf")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"expected pixel values in [0, 1] (Bernoulli targets), got range "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]")


def check_latents(z: torch.Tensor, config: VAEConfig) -> None:
    """Raise unless z is a non-empty (B, D) float batch of finite latents."""
    if z.dim() != 2 or z.shape[1] != config.latent_dim or z.shape[0] == 0:
        raise ValueError(f"expected latents of shape (B, {config.latent_dim}) with B >= 1, got {tuple(z.shape)}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise ValueError(f"expected finite float latents, got dtype {z.dtype}")


# ----------------------------------------------------------------------------- the pieces


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample z ~ N(mu, diag exp(logvar)) written as mu + sigma * eps, eps ~ N(0, I).

    The noise eps does not depend on the parameters, so gradients flow to mu and logvar.
    mu, logvar: (B, D) -> z: (B, D).
    """
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)  # (B, D)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for each latent separately, in nats. (B, D) -> (B, D)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)  # K&W (2014), appendix B


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, diag sigma^2) || N(0, I)) per example, in nats. (B, D) -> (B,)."""
    return kl_per_dim(mu, logvar).sum(dim=1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum over pixels of x log p + (1 - x) log(1 - p), p = sigmoid(logits), in nats.

    logits, x: (B, C, H, W) -> (B,). For grey x this is E_b[log p(b|z)], b ~ Bernoulli(x).
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU between two of them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (B, C, H, W) -> features (B, out_features), through the hidden widths of the config."""

    def __init__(self, config: VAEConfig, out_features: int) -> None:
        super().__init__()
        self.net = mlp([config.in_features, *config.hidden, out_features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, out_features)


class Decoder(nn.Module):
    """z (B, D) -> Bernoulli logits (B, C, H, W), through the hidden widths in reverse."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.shape = (config.in_channels, config.image_size, config.image_size)
        self.net = mlp([config.latent_dim, *reversed(config.hidden), config.in_features])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(1, self.shape)  # (B, C, H, W)


# ----------------------------------------------------------------------------- the models


class AEOutput(NamedTuple):
    logits: torch.Tensor  # (B, C, H, W) Bernoulli logits of the reconstruction
    z: torch.Tensor  # (B, D) the code, a deterministic function of x

    @property
    def x_hat(self) -> torch.Tensor:
        """The reconstruction, sigmoid(logits), in [0, 1]. (B, C, H, W)"""
        return torch.sigmoid(self.logits)


class Autoencoder(nn.Module):
    """The deterministic baseline: an MLP encoder and Bernoulli decoder with no noise and no prior.

    The VAE below is this autoencoder with a wider code (mu and logvar) and a sampled z.
    """

    def __init__(self, config: VAEConfig, code_features: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, out_features=code_features or config.latent_dim)  # (B, code_features)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> code z (B, D)."""
        check_images(x, self.config, next(self.parameters()).dtype)
        return self.encoder(x)  # (B, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """code z (B, D) -> Bernoulli logits (B, C, H, W)."""
        check_latents(z, self.config)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> AEOutput:
        z = self.encode(x)  # (B, D)
        return AEOutput(self.decoder(z), z)


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # (B, C, H, W) Bernoulli logits of p(x|z)
    mu: torch.Tensor  # (B, D) mean of q(z|x)
    logvar: torch.Tensor  # (B, D) log variance of q(z|x)
    z: torch.Tensor  # (B, D) the reparameterised sample that was decoded

    @property
    def x_hat(self) -> torch.Tensor:
        """The decoder's mean image, sigmoid(logits), in [0, 1]. (B, C, H, W)"""
        return torch.sigmoid(self.logits)


class VAE(Autoencoder):
    """Encoder q(z|x), prior N(0, I), Bernoulli decoder p(x|z). See the module docstring."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config, code_features=2 * config.latent_dim)  # mu and logvar side by side

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z|x): x (B, C, H, W) in [0, 1] -> mu (B, D), logvar (B, D)."""
        mu, logvar = super().encode(x).chunk(2, dim=1)  # (B, D) each
        return mu, logvar

    def forward(self, x: torch.Tensor) -> VAEOutput:
        """x (B, C, H, W) in [0, 1] -> VAEOutput(logits, mu, logvar, z)."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)  # (B, D)
        return VAEOutput(self.decoder(z), mu, logvar, z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new images: z ~ N(0, I), then the decoder's mean image. -> (n, C, H, W) in [0, 1].

        The mean, not a Bernoulli draw: pixels are independent given z, so a draw is speckled.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        device = next(self.parameters()).device
        z = to_device(torch.randn(n, self.config.latent_dim, generator=generator), device)  # (n, D)
        return torch.sigmoid(self.decoder(z))


# ----------------------------------------------------------------------------- objectives


class ELBO(NamedTuple):
    loss: torch.Tensor  # scalar: reconstruction + beta * kl, what is minimised
    reconstruction: torch.Tensor  # scalar: mean -log p(x|z) over the batch, nats per image (distortion)
    kl: torch.Tensor  # scalar: mean KL(q(z|x) || p(z)), nats per image (rate)


def elbo_terms(out: VAEOutput, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction -log p(x|z) and KL(q(z|x) || p(z)), in nats: two (B,) tensors.

    Their sum is the negative ELBO: a single-sample, unbiased estimate of an upper bound on -log p(x).
    """
    return -bernoulli_log_likelihood(out.logits, x), gaussian_kl(out.mu, out.logvar)


def negative_elbo(model: VAE, x: torch.Tensor, beta: float = 1.0) -> ELBO:
    """The training objective of a (beta-)VAE on a batch x (B, C, H, W) in [0, 1], in nats per image."""
    reconstruction, kl = elbo_terms(model(x), x)  # (B,), (B,)
    reconstruction, kl = reconstruction.mean(), kl.mean()
    return ELBO(reconstruction + beta * kl, reconstruction, kl)


def reconstruction_loss(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """The autoencoder's objective: mean -log p(x | z = encoder(x)) in nats per image. -> scalar."""
    return -bernoulli_log_likelihood(model(x).logits, x).mean()


def active_units(mu: torch.Tensor, threshold: float = 1e-2) -> torch.Tensor:
    """Which latents the encoder uses: Var over the data of E_q[z_d] > threshold (Burda et al., 2016).

    mu: (N, D) posterior means over a dataset -> (D,) bool. An inactive latent carries no
    information about x: its posterior is the same for every input (usually the prior).
    """
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise ValueError(f"expected posterior means (N, D) with N >= 2, got {tuple(mu.shape)}")
    return mu.var(dim=0) > threshold


@torch.no_grad()
def importance_log_likelihood(model: VAE, x: torch.Tensor, samples: int = 64,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) in nats (Burda et al., 2016, eq. 8). x (B, C, H, W) -> (B,).

    log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x): a lower bound on log p(x) that
    equals the ELBO for K = 1 and tightens as K grows. Memory grows as K·B images.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    mu, logvar = model.encode(x)  # (B, D)
    eps = torch.randn((samples, *mu.shape), generator=generator).to(mu)  # (K, B, D)
    z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, D)
    logits = model.decoder(z.flatten(0, 1))  # (K·B, C, H, W)
    log_px_z = bernoulli_log_likelihood(logits, x.repeat(samples, 1, 1, 1)).view(samples, -1)  # (K, B)
    log_2pi = math.log(2 * math.pi)
    log_pz = -0.5 * (z.pow(2) + log_2pi).sum(dim=2)  # (K, B)
    log_qz = -0.5 * (eps.pow(2) + logvar + log_2pi).sum(dim=2)  # (K, B)
    return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(samples)  # (B,)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def vae_scores(model: VAE, x: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-image held-out numbers of a VAE on images x (N, C, H, W): four (N,) tensors on the CPU.

    ``reconstruction`` -log p(x|z) and ``kl`` in nats (one seeded sample of z per image), ``neg_elbo``
    (beta = 1) their sum, and ``psnr`` (dB) of the mean image decoded from z = mu. Per image, so that
    two models scored on the same images can be compared with ``vqlib.core.metrics.bootstrap_ci``.
    The model is put in eval mode and left there.
    """
    from vqlib.core.metrics import psnr

    model.eval()
    device, g = model_device(model), torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"reconstruction": [], "kl": [], "psnr": []}
    for chunk in x.split(batch_size):
        chunk = to_device(chunk, device)
        mu, logvar = model.encode(chunk)  # (b, D)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g).to(mu)  # (b, D)
        reconstruction, kl = elbo_terms(VAEOutput(model.decoder(z), mu, logvar, z), chunk)  # (b,), (b,)
        parts["reconstruction"].append(reconstruction.float().cpu())
        parts["kl"].append(kl.float().cpu())
        parts["psnr"].append(psnr(chunk, torch.sigmoid(model.decoder(mu)), reduction="none").float().cpu())
    out = {k: torch.cat(v) for k, v in parts.items()}
    return {"neg_elbo": out["reconstruction"] + out["kl"], **out}


def evaluate_vae(model: VAE, x: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Held-out numbers of a VAE on images x (N, C, H, W), in nats per image and dB: the means of
    ``vae_scores`` (``neg_elbo`` = ``reconstruction`` + ``kl``, one seeded sample of z per image;
    ``psnr`` of the mean image decoded from z = mu). The model is put in eval mode and left there.
    """
    return {k: v.double().mean().item() for k, v in vae_scores(model, x, batch_size, seed).items()}


@torch.no_grad()
def evaluate_autoencoder(model: Autoencoder, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Held-out reconstruction (nats per image) and PSNR (dB) of an autoencoder on x (N, C, H, W)."""
    from vqlib.core.metrics import psnr

    model.eval()
    device, sums = model_device(model), {"reconstruction": 0.0, "psnr": 0.0}
    for chunk in x.split(batch_size):
        chunk = to_device(chunk, device)
        out = model(chunk)
        sums["reconstruction"] -= bernoulli_log_likelihood(out.logits, chunk).sum().item()
        sums["psnr"] += psnr(chunk, out.x_hat).item() * len(chunk)
    return {k: v / len(x) for k, v in sums.items()}

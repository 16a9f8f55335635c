"""Chapter 3: training a prior over codes, once per set of codes, then loading it from the cache;
and the length of the two-part code that puts a VQ-VAE with a prior in the same currency as a VAE.

What is in it:

- ``prior_train_config``: the step budget every Chapter 3 prior trains with, sized for a profile.
- ``train_prior``, which trains any prior of ``vqlib.priors`` (a model with ``nll`` and a
  ``config``) on integer codes with ``vqlib.priors.base.prior_loss`` and ``fit``, adds the held-out
  bits per dimension (the book passes validation codes) to the history's evaluations, and caches
  the trained weights with their history. The checkpoint is keyed by the model and training
  configs and by a digest of the training codes (``checkpoint_path(..., data=...)``), so codes from
  a retrained tokenizer train a new prior instead of loading a stale one. Chapter 3 trains its
  PixelCNN and GPTs with it; later chapters reuse it for their priors.
- ``bernoulli_bits`` and ``two_part_bits``: -log2 p(x|z) - log2 p(z) for binary images x, the
  length of a code that first sends the codes z with the prior, then x given z pixel by pixel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.profile import pick
from vqlib.priors.base import bits_per_dim, prior_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def prior_train_config(profile: str | None = None) -> TrainConfig:
    """The training run of every Chapter 3 prior (PixelCNN, GPT, class-conditional GPT), for ``profile``."""
    return TrainConfig(steps=pick(smoke=10, quick=500, full=8000, profile=profile),
                       batch_size=pick(smoke=16, quick=32, full=128, profile=profile),
                       lr=pick(smoke=5e-3, quick=5e-3, full=1e-3, profile=profile),
                       warmup_steps=pick(smoke=0, quick=20, full=200, profile=profile), cosine=True,
                       log_every=pick(smoke=5, quick=25, full=100, profile=profile),
                       eval_every=pick(smoke=5, quick=150, full=1000, profile=profile))


def train_prior(model: nn.Module, tokens: torch.Tensor, config: TrainConfig, name: str,
                cond: torch.Tensor | None = None, test: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                progress: bool | None = None) -> History:
    """Train ``model`` on ``tokens`` (N, ...) (with labels ``cond`` (N,) if conditional) with ``fit``.

    ``test`` = (tokens, cond or None): held-out codes whose bits/dim the history's evaluations
    record as training goes (pass validation codes: the test split is for a chapter's final
    numbers). The checkpoint is keyed by the model and training configs and by a digest of the
    training tokens and labels, so codes from a retrained VQ-VAE train a new prior instead of
    loading a stale one.
    """
    data = TensorDataset(tokens) if cond is None else TensorDataset(tokens, cond)
    eval_fn = None if test is None else (lambda m: {"bits_per_dim": bits_per_dim(m, *test)})
    return fit(model, prior_loss, data, config, eval_fn=eval_fn, progress=progress,
               checkpoint=checkpoint_path(name, model.config, config, data=data))


# ----------------------------------------------------------------------------- the two-part code

def bernoulli_bits(x: torch.Tensor, mean: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """-log2 p(x | mean) of binary images x (N, ...) under independent Bernoulli pixels -> (N,) float64.

    ``mean`` (same shape, e.g. a decoder's output) is clamped to [eps, 1 - eps] first, so every
    pixel has a probability of at least ``eps`` either way: a proper distribution over binary
    images for any 0 < eps <= 1/2, hence a valid code length whatever the decoder outputs.
    """
    if not 0 < eps <= 0.5:
        raise ValueError(f"eps must be in (0, 1/2], got {eps}")
    if x.shape != mean.shape or x.dim() < 2:
        raise ValueError(f"x and mean must have the same shape (N, ...), got {tuple(x.shape)} and {tuple(mean.shape)}")
    if not ((x == 0) | (x == 1)).all():
        raise ValueError("x must be binary images (values 0 and 1); see vqlib.data.mnist.binarize")
    m = mean.detach().double().clamp(eps, 1 - eps)
    x = x.double()
    return -(x * m.log2() + (1 - x) * (1 - m).log2()).flatten(1).sum(1)  # (N,)


def two_part_bits(x: torch.Tensor, mean: torch.Tensor, code_bits: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Length of the two-part code of binary images x (N, ...), in bits -> (N,) float64.

    First the codes z of each image, at ``code_bits`` (N,) = -log2 p(z) under a prior (e.g.
    ``vqlib.priors.base.sequence_bits``), then the image given z, at ``bernoulli_bits(x, mean, eps)``
    with ``mean`` the decoder's output for z. A receiver who knows the prior and the decoder
    recovers x exactly, so it is a lossless code, and since p(x) = sum_z p(z) p(x|z) >= p(z) p(x|z)
    for the sent z, its length is an upper bound on -log2 p(x) of the model prior + decoder
    (the VAE bound with a one-hot posterior).
    """
    code_bits = torch.as_tensor(code_bits, dtype=torch.float64).cpu()
    if code_bits.shape != (len(x),):
        raise ValueError(f"code_bits must hold one length per image, shape ({len(x)},), got {tuple(code_bits.shape)}")
    return code_bits + bernoulli_bits(x, mean, eps)


"""Chapter 7: MaskGIT and the GPT on the MNIST codes, trained for a stated budget and cached.

What is in it:

- ``train_maskgit``: trains a ``vqlib.priors.maskgit.MaskGIT`` on codes with ``maskgit_loss`` (the
  validation ``masked_bits`` in the evaluations), cached as ``vqlib.recipes.ch03_priors.train_prior``
  caches a prior: keyed by the configs and a digest of the training codes and labels.
- ``mnist_maskgit_train_config``: the GPT's budget in Chapter 7; ``equal_compute_steps``: how many
  MaskGIT steps cost the same floating-point operations (``vqlib.core.compute.step_flops``) as the
  GPT's steps, so that the two priors are compared at equal training compute.
- ``train_mnist_maskgit``: Chapter 7's class-conditional MaskGIT on the codes of the book's MNIST
  VQ-VAE (``vqlib.recipes.ch02_vqvae``), trained as in the chapter and cached.

Both priors train on the codes of ``mnist("train")``; their decoding settings are chosen on
``mnist("val")`` (carved from the training digits), and the test digits give the final numbers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import TensorDataset

from vqlib.core.compute import step_flops
from vqlib.core.inference import in_batches
from vqlib.core.profile import pick, seed_everything
from vqlib.data.mnist import mnist
from vqlib.priors.base import prior_loss
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.maskgit import MaskGIT, MaskGITConfig, maskgit_loss, masked_bits
from vqlib.recipes.ch02_vqvae import train_mnist_vqvae
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def train_maskgit(model: MaskGIT, tokens: torch.Tensor, config: TrainConfig, name: str,
                  cond: torch.Tensor | None = None, test: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                  progress: bool | None = None) -> History:
    """Train ``model`` on ``tokens`` (N, L) (labels ``cond`` (N,) if conditional) with ``maskgit_loss``.

    As ``vqlib.recipes.ch03_priors.train_prior``: ``test`` (validation codes and labels while training)
    adds their ``masked_bits`` to the evaluations,
    and the checkpoint is keyed by the configs and a digest of the training tokens and labels.
    """
    data = TensorDataset(tokens) if cond is None else TensorDataset(tokens, cond)
    eval_fn = None if test is None else (lambda m: {"masked_bits": masked_bits(m, *test)})
    return fit(model, maskgit_loss, data, config, eval_fn=eval_fn, progress=progress,
               checkpoint=checkpoint_path(name, model.config, config, data=data))


def mnist_maskgit_train_config(profile: str | None = None) -> TrainConfig:
    """The GPT's budget in Chapter 7 (Chapter 3's settings); MaskGIT's steps are set from it by
    floating-point operations (``equal_compute_steps``). ``quick`` is sized so that Chapter 7, both
    priors trained, runs in about two minutes on two CPU cores."""
    return TrainConfig(steps=pick(10, 640, 8000, profile=profile), batch_size=pick(16, 32, 128, profile=profile),
                       lr=pick(5e-3, 5e-3, 1e-3, profile=profile), warmup_steps=pick(0, 20, 200, profile=profile),
                       cosine=True, log_every=pick(5, 25, 100, profile=profile),
                       eval_every=pick(5, 160, 1000, profile=profile))


def equal_compute_steps(gpt: GPT, model: MaskGIT, batch: tuple[torch.Tensor, torch.Tensor | None],
                        gpt_steps: int) -> int:
    """MaskGIT steps whose floating-point operations (forward and backward, ``step_flops`` on
    ``batch`` = (tokens (B, L), labels (B,) or None)) equal those of ``gpt_steps`` GPT steps."""
    if gpt_steps < 1:
        raise ValueError(f"gpt_steps must be >= 1, got {gpt_steps}")
    tokens, cond = batch
    gpt_batch, maskgit_batch = ((tokens,), (tokens,)) if cond is None else ((tokens, cond), (tokens, cond))
    ratio = step_flops(gpt, prior_loss, gpt_batch) / step_flops(model, maskgit_loss, maskgit_batch)
    return max(1, round(gpt_steps * ratio))


def train_mnist_maskgit(profile: str | None = None, progress: bool | None = None) -> tuple[MaskGIT, History]:
    """Chapter 7's class-conditional MaskGIT on the codes of the book's MNIST VQ-VAE (cached), trained
    as in the chapter: on the training digits, for the GPT's floating-point operations
    (``equal_compute_steps``), evaluated on the validation digits.
    -> (model in eval mode, history with the validation ``masked_bits``)."""
    vqvae, _ = train_mnist_vqvae(profile)
    (x_train, y_train), (x_val, y_val) = (mnist(split, profile).tensors for split in ("train", "val"))
    codes_train = in_batches(vqvae.encode, vqvae, x_train).flatten(1)  # (N, L)
    codes_val = in_batches(vqvae.encode, vqvae, x_val).flatten(1)
    K, L = vqvae.config.codebook_size, codes_train.shape[1]
    seed_everything(0)  # the chapter's SEED: the same initial weights as the chapter's priors
    model = MaskGIT(MaskGITConfig.for_profile(K, L, profile, num_classes=10))
    gpt = GPT(GPTConfig.for_profile(K, block_size=L, num_classes=10, profile=profile, dropout=model.config.dropout))
    training = mnist_maskgit_train_config(profile)
    batch = (codes_train[:training.batch_size], y_train[:training.batch_size])
    steps = equal_compute_steps(gpt, model, batch, training.steps)
    history = train_maskgit(model, codes_train, dataclasses.replace(training, steps=steps), "ch7-maskgit-class",
                            cond=y_train, test=(codes_val, y_val), progress=progress)
    return model, history

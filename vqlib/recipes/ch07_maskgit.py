"""Chapter 7: MaskGIT and the GPT on the MNIST codes, trained for a stated budget and cached.

What is in it:

- ``holdout_split``: a seeded split of a training set into a part to train on and a disjoint
  validation part, on which decoding hyper-parameters are chosen (never on the test set);
  ``mnist_holdout``, how many MNIST training digits Chapter 7 holds out.
- ``train_maskgit``: trains a ``vqlib.priors.maskgit.MaskGIT`` on codes with ``maskgit_loss`` (the
  test ``masked_bits`` in the evaluations), cached as ``vqlib.recipes.ch03_priors.train_prior``
  caches a prior: keyed by the configs and a digest of the training codes and labels.
- ``mnist_maskgit_train_config`` (the GPT's budget in Chapter 7) and ``MASKGIT_COMPUTE`` (how many
  times the GPT's floating-point operations MaskGIT gets; ``vqlib.core.compute.step_flops`` counts them).
- ``train_mnist_maskgit``: Chapter 7's class-conditional MaskGIT on the codes of the book's MNIST
  VQ-VAE (``vqlib.recipes.ch02_vqvae``), trained as in the chapter and cached.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import TensorDataset

from vqlib.core.compute import step_flops
from vqlib.core.inference import in_batches
from vqlib.core.profile import pick
from vqlib.data.mnist import mnist
from vqlib.priors.base import prior_loss
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.maskgit import MaskGIT, MaskGITConfig, maskgit_loss, masked_bits
from vqlib.recipes.ch02_vqvae import train_mnist_vqvae
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def holdout_split(n: int, n_holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``n`` examples at random (seeded) -> (indices to train on (n - n_holdout,), held-out
    indices (n_holdout,)), disjoint, together a permutation of 0..n-1."""
    if not 0 < n_holdout < n:
        raise ValueError(f"n_holdout must be in [1, n - 1] = [1, {n - 1}] (something to train on and to hold out), "
                         f"got {n_holdout}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # (n,)
    return order[n_holdout:], order[:n_holdout]


def train_maskgit(model: MaskGIT, tokens: torch.Tensor, config: TrainConfig, name: str,
                  cond: torch.Tensor | None = None, test: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                  progress: bool | None = None) -> History:
    """Train ``model`` on ``tokens`` (N, L) (labels ``cond`` (N,) if conditional) with ``maskgit_loss``.

    As ``vqlib.recipes.ch03_priors.train_prior``: ``test`` adds the test ``masked_bits`` to the evaluations,
    and the checkpoint is keyed by the configs and a digest of the training tokens and labels.
    """
    data = TensorDataset(tokens) if cond is None else TensorDataset(tokens, cond)
    eval_fn = None if test is None else (lambda m: {"masked_bits": masked_bits(m, *test)})
    return fit(model, maskgit_loss, data, config, eval_fn=eval_fn, progress=progress,
               checkpoint=checkpoint_path(name, model.config, config, data=data))


def mnist_maskgit_train_config(profile: str | None = None) -> TrainConfig:
    """The GPT's budget in Chapter 7 (Chapter 3's settings, with eight times the steps in ``quick``);
    MaskGIT's steps are set from it by floating-point operations (``step_flops``, ``MASKGIT_COMPUTE``).

    In trials on the validation digits (``mnist_holdout``), with dropout 0.1 in both priors, both kept
    improving up to sixteen times Chapter 3's steps; ``quick`` takes eight, a few minutes per prior
    on two CPU cores."""
    return TrainConfig(steps=pick(10, 4800, 8000, profile=profile), batch_size=pick(16, 32, 128, profile=profile),
                       lr=pick(5e-3, 5e-3, 1e-3, profile=profile), warmup_steps=pick(0, 20, 200, profile=profile),
                       cosine=True, log_every=pick(5, 100, 100, profile=profile),
                       eval_every=pick(5, 1200, 1000, profile=profile))


MASKGIT_COMPUTE = 2
"""Chapter 7's MaskGIT trains with this many times the GPT's floating-point operations. A masked
model learns more slowly per operation than a causal one (it must learn every order of the codes,
and scores only the masked ones); at equal operations its 4-step samples stayed clearly behind the
GPT's in Chapter 7's trials, with twice the operations they caught up. The chapter measures both."""


def mnist_holdout(profile: str | None = None) -> int:
    """How many MNIST training digits Chapter 7 holds out (``holdout_split``, seed 0) to choose
    decoding settings on; the priors train on the rest."""
    return pick(500, 500, 5000, profile=profile)


def train_mnist_maskgit(profile: str | None = None, progress: bool | None = None) -> tuple[MaskGIT, History]:
    """Chapter 7's class-conditional MaskGIT on the codes of the book's MNIST VQ-VAE (cached), trained
    as in the chapter: on the training digits not held out, for ``MASKGIT_COMPUTE`` times the GPT's
    operations.
    -> (model in eval mode, history with the test ``masked_bits``)."""
    vqvae, _ = train_mnist_vqvae(profile)
    (x_train, y_train), (x_test, y_test) = (mnist(split, profile).tensors for split in ("train", "test"))
    fit_idx, _ = holdout_split(len(x_train), mnist_holdout(profile), 0)
    codes_train = in_batches(vqvae.encode, vqvae, x_train[fit_idx]).flatten(1)  # (N, L)
    codes_test = in_batches(vqvae.encode, vqvae, x_test).flatten(1)
    K, L = vqvae.config.codebook_size, codes_train.shape[1]
    model = MaskGIT(MaskGITConfig.for_profile(K, L, profile, num_classes=10))
    gpt = GPT(GPTConfig.for_profile(K, block_size=L, num_classes=10, profile=profile, dropout=model.config.dropout))
    training = mnist_maskgit_train_config(profile)
    batch = (codes_train[:training.batch_size], y_train[fit_idx][:training.batch_size])
    flop_ratio = step_flops(gpt, prior_loss, batch) / step_flops(model, maskgit_loss, batch)  # GPT / MaskGIT
    steps = round(MASKGIT_COMPUTE * training.steps * flop_ratio)
    history = train_maskgit(model, codes_train, dataclasses.replace(training, steps=steps), "ch7-maskgit-class",
                            cond=y_train[fit_idx], test=(codes_test, y_test), progress=progress)
    return model, history

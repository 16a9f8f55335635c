"""Chapter 1: the MNIST autoencoder and VAE, trained once and then loaded from the checkpoint cache.

What is in it: ``vae_train_config`` (the training run both models share, sized for a profile),
``train_mnist_vae`` (a beta-VAE of ``vqlib.tokenizers.vae``; one checkpoint per latent size and
beta) and ``train_mnist_autoencoder`` (the deterministic baseline; one checkpoint per latent size).
Both evaluate on the MNIST validation split as they train (the test split is left for the chapter's final
numbers) and cache the trained weights with their history.
"""

from __future__ import annotations

import torch
from torch import nn

from vqlib.core.profile import pick
from vqlib.data.mnist import mnist
from vqlib.tokenizers.vae import (VAE, Autoencoder, VAEConfig, evaluate_autoencoder, evaluate_vae, negative_elbo,
                                  reconstruction_loss)
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def vae_train_config(profile: str | None = None) -> TrainConfig:
    """The training run of the Chapter 1 models, sized for ``profile``."""
    return TrainConfig(steps=pick(smoke=30, quick=1000, full=30_000, profile=profile), batch_size=128, lr=2e-3,
                       eval_every=pick(smoke=15, quick=100, full=1000, profile=profile),
                       log_every=pick(smoke=5, quick=25, full=100, profile=profile))


def _initialised(model_class: type[nn.Module], config: VAEConfig, seed: int) -> nn.Module:
    # The same initial weights whatever the caller did with the global RNG, which is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config)


def train_mnist_vae(profile: str | None = None, latent_dim: int = 16, beta: float = 1.0,
                    progress: bool | None = None) -> tuple[VAE, History]:
    """Train a (beta-)VAE on MNIST, or load it from the checkpoint cache. -> (model in eval mode, history).

    The history's eval records hold the validation split's ``neg_elbo``, ``reconstruction``, ``kl`` and ``psnr``
    (the test split is left for the chapter's final numbers).
    """
    config = VAEConfig.for_profile(profile, latent_dim=latent_dim)
    train_config = vae_train_config(profile)
    val_x = mnist("val", profile).tensors[0]  # (N, 1, 28, 28)
    model = _initialised(VAE, config, train_config.seed)
    train = mnist("train", profile)
    history = fit(model, lambda m, batch: negative_elbo(m, batch[0], beta)._asdict(), train,
                  train_config, eval_fn=lambda m: evaluate_vae(m, val_x), progress=progress,
                  checkpoint=checkpoint_path("mnist-vae", config, train_config, {"beta": beta}, data=train,
                                             profile=profile))
    return model, history


def train_mnist_autoencoder(profile: str | None = None, latent_dim: int = 16,
                            progress: bool | None = None) -> tuple[Autoencoder, History]:
    """Train the deterministic autoencoder baseline on MNIST, or load it from the checkpoint cache."""
    config = VAEConfig.for_profile(profile, latent_dim=latent_dim)
    train_config = vae_train_config(profile)
    val_x = mnist("val", profile).tensors[0]  # (N, 1, 28, 28)
    model = _initialised(Autoencoder, config, train_config.seed)
    train = mnist("train", profile)
    history = fit(model, lambda m, batch: {"loss": reconstruction_loss(m, batch[0])}, train,
                  train_config, eval_fn=lambda m: evaluate_autoencoder(m, val_x), progress=progress,
                  checkpoint=checkpoint_path("mnist-ae", config, train_config, data=train, profile=profile))
    return model, history

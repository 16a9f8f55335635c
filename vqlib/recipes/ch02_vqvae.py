"""Chapter 2: the book's MNIST VQ-VAE, trained once per profile and configuration, then loaded from the cache.

What is in it: ``vqvae_train_config`` (the training budget of the MNIST VQ-VAE for a profile) and
``train_mnist_vqvae``, which trains ``vqlib.tokenizers.vqvae.VQVAE`` on MNIST with ``vqvae_loss``,
evaluates it on the validation split as it goes (PSNR, codebook usage, perplexity) and caches the trained
weights with their history. Chapters 3 and 7 encode MNIST with this model; Chapter 6 trains its
quantizer comparison with the same budget.
"""

from __future__ import annotations

from vqlib.core.profile import pick, seed_everything
from vqlib.data.mnist import mnist
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae, vqvae_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit, split_overrides


def vqvae_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of the MNIST VQ-VAE for a profile; ``overrides`` set TrainConfig fields."""
    # quick: 1,000 steps of batch 64 (about 115 s of CPU on 2 cores), so that Chapter 2, which also trains
    # its small beta and collapse runs, executes in under 4 minutes of kernel CPU from an empty cache.
    defaults = dict(steps=pick(30, 1000, 20_000, profile=profile), batch_size=pick(32, 64, 128, profile=profile),
                    lr=2e-3, cosine=True,
                    log_every=pick(5, 25, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_mnist_vqvae(profile: str | None = None, **overrides) -> tuple[VQVAE, History]:
    """The book's MNIST VQ-VAE, trained once per profile and configuration, then loaded from the cache.

    ``overrides`` set fields of VQVAEConfig or TrainConfig, e.g. ``train_mnist_vqvae(beta=1.0, steps=200)``.
    Returns the model in eval mode and its History (with validation PSNR, codebook usage and perplexity).
    """
    model_overrides, train_overrides = split_overrides(overrides, VQVAEConfig)
    config = VQVAEConfig.for_profile(profile, in_channels=1, **model_overrides)
    train_config = vqvae_train_config(profile, **train_overrides)
    seed_everything(train_config.seed)
    model = VQVAE(config)
    val, train = mnist("val", profile=profile), mnist("train", profile=profile)
    history = fit(model, vqvae_loss, train, train_config, eval_fn=lambda m: evaluate_vqvae(m, val),
                  checkpoint=checkpoint_path("mnist-vqvae", config, train_config, data=train, profile=profile))
    return model, history

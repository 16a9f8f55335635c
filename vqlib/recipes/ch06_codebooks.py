"""Chapter 6: the Chapter 2 MNIST VQ-VAE trained with each quantizer of the book, compared.

What is in it: ``train_mnist_codebook`` (the Chapter 2 VQ-VAE with the quantizer
``vqlib.quantizers.factory.make_quantizer(kind, D, **options)``, trained once per configuration,
then loaded from the checkpoint cache, scored by ``vqlib.tokenizers.vqvae.evaluate_vqvae``: PSNR,
usage and perplexity of joint codes, bits per image) and the comparison of chapter 6:
``COMPARED`` (ten quantizers at 8 bits per position), the model and training budget shared by all
of them (``comparison_model``, ``comparison_training``) and ``train_comparison``.

The kinds of quantizer are those of ``vqlib.quantizers.factory``; a residual quantizer's code
is a tuple of S indices, counted as one integer per position (``vqlib.quantizers.vector.joint_indices``).

Dimension key: B batch, S stages, D code dim, h w code-map height and width, K codebook size.
"""

from __future__ import annotations

from vqlib.core.profile import pick, seed_everything
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import joint_indices  # noqa: F401 (re-exported)
from vqlib.recipes.ch02_vqvae import vqvae_train_config
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae, vqvae_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, fit, split_overrides


def train_mnist_codebook(kind: str, options: dict | None = None, profile: str | None = None,
                         **overrides) -> tuple[VQVAE, History]:
    """The Chapter 2 MNIST VQ-VAE with the quantizer ``make_quantizer(kind, D, **options)``.

    ``overrides`` set fields of VQVAEConfig (the encoder and decoder) or TrainConfig. Trained once
    per profile and configuration, then loaded from the cache. Stops by steps only. Returns the
    model in eval mode and its History (validation PSNR, usage, perplexity and bits at each evaluation).
    """
    from vqlib.data.mnist import mnist

    options = dict(options or {})
    model_overrides, train_overrides = split_overrides(overrides, VQVAEConfig)
    config = VQVAEConfig.for_profile(profile, in_channels=1, **model_overrides)
    train_config = vqvae_train_config(profile, **train_overrides)
    seed_everything(train_config.seed)
    model = VQVAE(config, quantizer=make_quantizer(kind, config.code_dim, **options))
    val, train = mnist("val", profile=profile), mnist("train", profile=profile)
    history = fit(model, vqvae_loss, train, train_config, eval_fn=lambda m: evaluate_vqvae(m, val),
                  checkpoint=checkpoint_path(f"codebooks-{kind}", config, {"kind": kind, **options}, train_config,
                                             data=train, profile=profile))
    return model, history


# ----------------------------------------------------------------------------- chapter 6's comparison

COMPARED = {  # name -> (kind, options): 256 codes (8 bits) per position, FSQ 240
    "VQ, codebook by gradient": ("vq", dict(codebook_size=256)),
    "EMA, random init": ("ema", dict(codebook_size=256, data_init=False, restart_threshold=0.0)),
    "EMA + data init": ("ema", dict(codebook_size=256, restart_threshold=0.0)),
    "EMA + k-means init": ("ema", dict(codebook_size=256, restart_threshold=0.0, kmeans_iters=10)),
    "EMA + data init + restarts": ("ema", dict(codebook_size=256)),
    "l2-normalised codes, d = 8": ("l2", dict(codebook_size=256, low_dim=8)),
    "VQ + rotation trick": ("rotation", dict(inner="vq", codebook_size=256)),
    "residual VQ, 2 × 16 codes": ("residual", dict(num_stages=2, codebook_size=16)),
    "FSQ, levels 8·6·5": ("fsq", dict(levels=(8, 6, 5))),
    "LFQ, 8 bits": ("lfq", dict(bits=8)),
}


def comparison_model(profile: str | None = None) -> dict:
    """VQVAEConfig overrides of the compared model: Chapter 2's small side runs in ``quick``."""
    return pick(smoke=dict(), quick=dict(hidden=32, res_hidden=16, res_blocks=1, code_dim=16), full=dict(),
                profile=profile)


def comparison_training(profile: str | None = None) -> dict:
    """TrainConfig overrides of the comparison: the same steps and evaluations for every quantizer."""
    return pick(smoke=dict(steps=8, eval_every=4), quick=dict(steps=300, eval_every=50),
                full=dict(steps=3_000, eval_every=250), profile=profile)


def train_comparison(profile: str | None = None) -> dict[str, tuple[VQVAE, History]]:
    """Every quantizer of ``COMPARED`` in the same model, on the same data and budget (each cached)."""
    sizes = {**comparison_model(profile), **comparison_training(profile)}
    return {name: train_mnist_codebook(kind, options, profile=profile, **sizes) for name, (kind, options) in COMPARED.items()}


def train_mnist_codebooks(profile: str | None = None) -> tuple[VQVAE, History]:
    """``scripts/train.py`` recipe: train (or load) all of chapter 6's runs; returns the last one."""
    return list(train_comparison(profile).values())[-1]

"""Chapter 6: the Chapter 2 MNIST VQ-VAE trained with each quantizer of the book, compared.

What is in it: ``train_mnist_codebook`` (the Chapter 2 VQ-VAE with the quantizer
``vqlib.quantizers.factory.make_quantizer(kind, D, **options)``, trained once per configuration,
then loaded from the checkpoint cache, scored by ``vqlib.tokenizers.vqvae.evaluate_vqvae``: PSNR,
usage and perplexity of joint codes, bits per image) and the comparison of chapter 6:
``COMPARED`` (ten quantizers at 8 bits per position), the model and training budget shared by all
of them (``comparison_model``, ``comparison_training``) and ``train_comparison``; the sweep over
codebook sizes (``sweep_sizes``, ``sized_quantizers``: VQ with restarts, residual VQ, FSQ and LFQ
at about K codes per position; ``sweep_model``, ``sweep_training``, ``train_sweep``) and one GPT
prior per size on the codes of one of them (``SWEEP_PRIOR_QUANTIZER``, ``sweep_prior_config``,
``sweep_prior_training``, ``train_sweep_prior``).

The kinds of quantizer are those of ``vqlib.quantizers.factory``; a residual quantizer's code
is a tuple of S indices, counted as one integer per position (``vqlib.quantizers.vector.joint_indices``).

Dimension key: B batch, S stages, D code dim, h w code-map height and width, K codebook size.
"""

from __future__ import annotations

import dataclasses
import math

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick, seed_everything
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import codes_per_position, joint_indices  # noqa: F401 (re-exported)
from vqlib.recipes.ch02_vqvae import vqvae_train_config
from vqlib.recipes.ch03_priors import prior_train_config, train_prior
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae, vqvae_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit, split_overrides


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
    # quick: 240 steps of batch 32 (Chapter 2: 64), so that the table and the sweep below fit in the chapter's budget
    return pick(smoke=dict(steps=8, eval_every=4), quick=dict(steps=240, eval_every=40, batch_size=32),
                full=dict(steps=3_000, eval_every=250), profile=profile)


def train_comparison(profile: str | None = None) -> dict[str, tuple[VQVAE, History]]:
    """Every quantizer of ``COMPARED`` in the same model, on the same data and budget (each cached)."""
    sizes = {**comparison_model(profile), **comparison_training(profile)}
    return {name: train_mnist_codebook(kind, options, profile=profile, **sizes) for name, (kind, options) in COMPARED.items()}


# ----------------------------------------------------------------------------- chapter 6's sweep over K

# FSQ levels whose product is about K: the FSQ paper's table for 2^8, 2^10 and 2^12, and levels of
# the same kind (few dimensions, 3 to 8 levels each) for the sizes between
FSQ_LEVELS = {16: (5, 3), 32: (8, 4), 64: (8, 8), 128: (8, 4, 4), 256: (8, 6, 5), 512: (8, 8, 8),
              1024: (8, 5, 5, 5), 2048: (8, 8, 6, 5), 4096: (7, 5, 5, 5, 5)}
SWEEP_PRIOR_QUANTIZER = "VQ + restarts"  # the sweep's quantizer whose codes the priors model


def sweep_sizes(profile: str | None = None) -> tuple[int, ...]:
    """The codebook sizes K of the sweep: 2^4 ... 2^12 in ``full``, every other one in ``quick``."""
    return pick(smoke=(16, 256), quick=(16, 64, 256, 1024, 4096), full=tuple(2 ** e for e in range(4, 13)),
                profile=profile)


def sized_quantizers(codebook_size: int) -> dict[str, tuple[str, dict]]:
    """The four quantizers of the sweep with (about) K = ``codebook_size`` codes per position.

    name -> (kind, options): an EMA codebook of K codes with data init and restarts; residual VQ,
    2 stages of round(√K) codes (exactly K for even log2 K); FSQ with ``FSQ_LEVELS[K]``; LFQ with
    log2 K bits. At K = 256 they are runs of the comparison (``COMPARED``): where the sweep's model and
    budget are the comparison's, the two share their cached runs.
    """
    if codebook_size not in FSQ_LEVELS:
        raise ValueError(f"codebook_size must be a power of 2 from 16 to 4096 (the sweep's sizes), "
                         f"got {codebook_size!r}")
    return {"VQ + restarts": ("ema", dict(codebook_size=codebook_size)),
            "residual VQ, 2 stages": ("residual", dict(num_stages=2, codebook_size=round(math.sqrt(codebook_size)))),
            "FSQ": ("fsq", dict(levels=FSQ_LEVELS[codebook_size])),
            "LFQ": ("lfq", dict(bits=int(math.log2(codebook_size))))}


def sweep_model(profile: str | None = None) -> dict:
    """VQVAEConfig overrides of the sweep's model: the comparison's, half as wide in ``quick``."""
    return pick(smoke=comparison_model("smoke"), quick=dict(hidden=16, res_hidden=8, res_blocks=1, code_dim=16),
                full=comparison_model("full"), profile=profile)


def sweep_training(profile: str | None = None) -> dict:
    """TrainConfig overrides of the sweep, the same for every run: the comparison's in ``smoke`` and
    ``full``; in ``quick`` fewer steps, evaluated once at the end (twenty runs share the budget)."""
    return pick(smoke=comparison_training("smoke"), quick=dict(steps=150, eval_every=150, batch_size=32),
                full=comparison_training("full"), profile=profile)


def train_sweep(profile: str | None = None) -> dict[tuple[str, int], tuple[VQVAE, History]]:
    """Every quantizer of ``sized_quantizers(K)`` for every K of ``sweep_sizes``, in the same model and
    budget (``sweep_model``, ``sweep_training``; each cached). -> {(name, K): (model, history)}."""
    sizes = {**sweep_model(profile), **sweep_training(profile)}
    return {(name, k): train_mnist_codebook(kind, options, profile=profile, **sizes)
            for k in sweep_sizes(profile) for name, (kind, options) in sized_quantizers(k).items()}


def sweep_prior_config(vocab_size: int, block_size: int, profile: str | None = None) -> GPTConfig:
    """The GPT of the sweep: the book's GPT for ``profile``, two layers narrower in ``quick``."""
    sizes = pick(smoke=dict(), quick=dict(n_layer=2, n_head=4, n_embd=32), full=dict(), profile=profile)
    return GPTConfig.for_profile(vocab_size, block_size, profile, **sizes)


def sweep_prior_training(profile: str | None = None) -> TrainConfig:
    """The training run of every prior of the sweep, the same steps for every K: Chapter 3's
    (``prior_train_config``) with fewer steps in ``quick``."""
    return dataclasses.replace(prior_train_config(profile), steps=pick(smoke=10, quick=150, full=8000, profile=profile))


def train_sweep_prior(model: VQVAE, profile: str | None = None,
                      progress: bool | None = None) -> tuple[GPT, History]:
    """A GPT (``sweep_prior_config``) on the codes of the training digits under ``model``, a VQ-VAE
    with one index per position (not residual VQ), trained with ``sweep_prior_training`` and cached
    (``vqlib.recipes.ch03_priors.train_prior``); the history records the validation codes' bits per
    token. -> (prior in eval mode, history)."""
    from vqlib.data.mnist import mnist

    if getattr(model.quantizer, "num_stages", None) is not None:
        raise ValueError("train_sweep_prior needs a quantizer with one index per position; this one has "
                         f"{model.quantizer.num_stages} stages (a residual quantizer): pick another run of the sweep")
    codes = {split: in_batches(model.encode, model, mnist(split, profile).tensors[0]).flatten(1)  # (N, L)
             for split in ("train", "val")}
    seed_everything(0)  # the chapter's SEED: every prior starts from the same kind of initial weights
    prior = GPT(sweep_prior_config(codes_per_position(model.quantizer), codes["train"].shape[1], profile))
    history = train_prior(prior, codes["train"], sweep_prior_training(profile), "ch6-sweep-gpt",
                          test=(codes["val"], None), progress=progress)
    return prior, history


def train_mnist_codebooks(profile: str | None = None) -> tuple[VQVAE, History]:
    """``scripts/train.py`` recipe: train (or load) all of chapter 6's runs; returns the last one."""
    train_sweep(profile)
    return list(train_comparison(profile).values())[-1]

"""Chapter 7: MaskGIT and the GPT on the MNIST codes, trained for a stated budget and cached.

What is in it:

- ``train_maskgit``: trains a ``vqlib.priors.maskgit.MaskGIT`` on codes with ``maskgit_loss`` (the
  validation ``masked_bits`` in the evaluations), cached as ``vqlib.recipes.ch03_priors.train_prior``
  caches a prior: keyed by the configs and a digest of the training codes and labels.
- ``mnist_gpt_config`` and ``mnist_maskgit_train_config``: the GPT Chapter 7 compares with is
  Chapter 3's class-conditional GPT (the same configuration, budget and codes, so the checkpoint
  cache gives it back); ``equal_compute_steps``: how many MaskGIT steps cost the same floating-point
  operations (``vqlib.core.compute.step_flops``) as the GPT's steps, so that the two priors are
  compared at equal training compute.
- ``train_mnist_maskgit``: Chapter 7's class-conditional MaskGIT on the codes of the book's MNIST
  VQ-VAE (``vqlib.recipes.ch02_vqvae``), trained as in the chapter and cached; its configuration is
  ``mnist_maskgit_config`` (with class dropout, so that it can be guided).
- ``DecodingGrid`` / ``decoding_grid``: the sampler settings of both priors that the chapter tries on
  the validation digits (the GPT's temperature and top-k; MaskGIT's schedule, steps and choice
  temperature), and ``grid_search``, which scores them and widens an axis whose best value lies on
  its edge until it lies inside (``inside``).

Both priors train on the codes of ``mnist("train")``; their decoding settings are chosen on
``mnist("val")`` (carved from the training digits), and the test digits give the final numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

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
from vqlib.recipes.ch03_priors import prior_train_config
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def mnist_gpt_config(vocab_size: int, block_size: int, profile: str | None = None) -> GPTConfig:
    """The GPT Chapter 7 compares with: Chapter 3's class-conditional GPT, trained by
    ``vqlib.recipes.ch03_priors.train_prior`` with ``mnist_maskgit_train_config`` as "ch3-gpt-class"."""
    return GPTConfig.for_profile(vocab_size, block_size=block_size, num_classes=10, profile=profile)


def mnist_maskgit_config(vocab_size: int, block_size: int, profile: str | None = None) -> MaskGITConfig:
    """Chapter 7's class-conditional MaskGIT: the profile's size, the GPT's dropout, and a tenth of
    the training labels hidden (``class_dropout``, Muse's value) so that classifier-free guidance can
    use it."""
    dropout = mnist_gpt_config(vocab_size, block_size, profile).dropout
    return MaskGITConfig.for_profile(vocab_size, block_size, profile, num_classes=10, dropout=dropout,
                                     class_dropout=0.1)


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
    """The GPT's budget in Chapter 7: Chapter 3's (``prior_train_config``), so that its class GPT is
    reused; MaskGIT's steps are set from it by floating-point operations (``equal_compute_steps``)."""
    return prior_train_config(profile)


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
    model = MaskGIT(mnist_maskgit_config(K, L, profile))
    gpt = GPT(mnist_gpt_config(K, L, profile))
    training = mnist_maskgit_train_config(profile)
    batch = (codes_train[:training.batch_size], y_train[:training.batch_size])
    steps = equal_compute_steps(gpt, model, batch, training.steps)
    history = train_maskgit(model, codes_train, dataclasses.replace(training, steps=steps), "ch7-maskgit-class",
                            cond=y_train, test=(codes_val, y_val), progress=progress)
    return model, history


# ----------------------------------------------------------------------------- choosing the samplers' settings

@dataclass(frozen=True)
class DecodingGrid:
    """The sampler settings Chapter 7 scores on the validation digits, for both priors alike."""

    gpt_temperatures: tuple[float, ...]  # the GPT's sampling temperature (widened at an edge)
    gpt_top_ks: tuple[int | None, ...]  # keep the k most likely codes (None: all K)
    schedules: tuple[str, ...]  # MaskGIT's decoding schedule
    steps: tuple[int, ...]  # MaskGIT's decoding steps T, its network evaluations per sample
    choice_temperatures: tuple[float, ...]  # MaskGIT's τ, the Gumbel noise on confidences (widened at an edge)
    samples: int  # drawn and scored per setting


def decoding_grid(profile: str | None = None) -> DecodingGrid:
    """Chapter 7's grid for ``profile``: a coarse one, few samples per setting in ``smoke`` and ``quick``."""
    return DecodingGrid(gpt_temperatures=(0.7, 0.85, 1.0), gpt_top_ks=(None, 64, 8),
                        schedules=("cosine", "linear"), steps=pick((2, 4), (2, 4), (2, 4, 8), profile=profile),
                        choice_temperatures=(0.5, 1.0, 2.0, 4.5),
                        samples=pick(20, 300, 2000, profile=profile))


def grid_search(axes: Mapping[str, Sequence], score: Callable[..., Mapping[str, float]], objective: str = "fd",
                widen: Sequence[str] = (), max_rounds: int = 6) -> tuple[dict, dict[tuple, Mapping[str, float]]]:
    """Minimise ``score(**setting)[objective]`` over the product of ``axes`` ({name: values}).

    Then, while the best setting sits on the smallest or largest value of an axis named in ``widen``
    (positive numbers), score the next value beyond that edge (the outer step of the grid again:
    twice the largest of 1, 2; a quarter of the smallest of 1, 0.25; rounded on an axis of integers,
    which cannot go below 1) with the other axes at the best setting (and the axis's own grid too,
    where the best has moved to a setting of the other axes not tried with all of it), in at most
    ``max_rounds`` rounds over those axes. -> (best setting {name: value}, every setting tried
    {tuple of values in the order of ``axes``: its scores}).
    """
    names = list(axes)
    unknown = [name for name in widen if name not in axes]
    if unknown or not all(len(values) >= 2 for name, values in axes.items() if name in widen):
        raise ValueError(f"widen names axes of at least two values; got {list(widen)} for axes "
                         f"{ {name: list(values) for name, values in axes.items()} }")
    if any(not value > 0 for name in widen for value in axes[name]):
        raise ValueError(f"an axis to widen must hold positive numbers, got {({n: list(axes[n]) for n in widen})}")
    tried: dict[tuple, Mapping[str, float]] = {}

    def run(setting: tuple) -> None:
        if setting not in tried:
            tried[setting] = score(**dict(zip(names, setting)))

    def best() -> tuple:
        return min(tried, key=lambda setting: tried[setting][objective])

    for setting in itertools.product(*axes.values()):
        run(setting)

    def line_of(i: int) -> list:
        """The values of axis i tried with the other axes at the best setting; first every value of
        the axis's own grid is scored there (the best may have moved to a line not yet filled)."""
        while True:
            top = best()
            missing = [top[:i] + (v,) + top[i + 1:] for v in axes[names[i]]
                       if top[:i] + (v,) + top[i + 1:] not in tried]
            if not missing:
                return sorted({s[i] for s in tried if s[:i] + s[i + 1:] == top[:i] + top[i + 1:]})
            for setting in missing:
                run(setting)

    for _ in range(max_rounds):
        edges = 0
        for i in (names.index(name) for name in widen):
            line, top = line_of(i), best()
            if not line[0] < top[i] < line[-1]:  # on an edge: one more value beyond it, in the grid's ratio
                beyond = line[-1] ** 2 / line[-2] if top[i] == line[-1] else line[0] ** 2 / line[1]
                if all(isinstance(v, int) for v in line):  # e.g. steps: 4, 8 -> 16; 1 is as low as it goes
                    beyond = round(beyond)
                if beyond > 0 and beyond not in line:
                    edges += 1
                    run(top[:i] + (beyond,) + top[i + 1:])
        if edges == 0:
            break
    return dict(zip(names, best())), tried


def inside(tried: Mapping[tuple, object], best: Mapping[str, object], axis: str) -> bool:
    """Whether ``best`` (from ``grid_search``) lies strictly between the smallest and the largest value of
    ``axis`` tried with the other axes at their best values."""
    names = list(best)
    i = names.index(axis)
    top = tuple(best.values())
    line = [s[i] for s in tried if s[:i] + s[i + 1:] == top[:i] + top[i + 1:]]
    return min(line) < best[axis] < max(line)

"""Chapter 3: training a prior over codes, once per set of codes, then loading it from the cache.

What is in it: ``train_prior``, which trains any prior of ``vqlib.priors`` (a model with ``nll``
and a ``config``) on integer codes with ``vqlib.priors.base.prior_loss`` and ``fit``, adds the test
bits per dimension to the history's evaluations, and caches the trained weights with their history.
The checkpoint is keyed by the model and training configs and by a digest of the training codes
(``checkpoint_path(..., data=...)``), so codes from a retrained tokenizer train a new prior instead of loading a
stale one. Chapter 3 trains its PixelCNN and GPTs with it; later chapters reuse it for their priors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.priors.base import bits_per_dim, prior_loss
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


def train_prior(model: nn.Module, tokens: torch.Tensor, config: TrainConfig, name: str,
                cond: torch.Tensor | None = None, test: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                progress: bool | None = None) -> History:
    """Train ``model`` on ``tokens`` (N, ...) (with labels ``cond`` (N,) if conditional) with ``fit``.

    ``test`` = (tokens, cond or None) adds the test bits/dim to the history's evaluations. The
    checkpoint is keyed by the model and training configs and by a digest of the training tokens
    and labels, so codes from a retrained VQ-VAE train a new prior instead of loading a stale one.
    """
    data = TensorDataset(tokens) if cond is None else TensorDataset(tokens, cond)
    eval_fn = None if test is None else (lambda m: {"bits_per_dim": bits_per_dim(m, *test)})
    return fit(model, prior_loss, data, config, eval_fn=eval_fn, progress=progress,
               checkpoint=checkpoint_path(name, model.config, config, data=data))

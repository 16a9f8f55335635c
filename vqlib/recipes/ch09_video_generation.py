"""Chapter 9: training the video prior on a tokenizer's codes and their captions.

What is in it: ``train_video_prior``, ``vqlib.training.loop.fit`` with
``vqlib.priors.video_prior.video_prior_loss`` on grids of codes and caption ids, cached by both
configs and a digest of the codes and captions. The tokenizer of chapter 9 is trained by
``vqlib.recipes.ch08_video_tokenizers.train_video_vqvae``.

Dimension key: N clips, t h w code-grid size, P caption words.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import TensorDataset

from vqlib.priors.video_prior import VideoPrior, video_prior_loss
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.loop import History, TrainConfig, fit


def train_video_prior(model: VideoPrior, indices: torch.Tensor, captions: Sequence[str] | None,
                      config: TrainConfig, name: str, progress: bool | None = None) -> History:
    """Train ``model`` on grids of codes (N, t, h, w) and their captions with ``fit`` (or load it).

    The checkpoint is keyed by both configs and a digest of the codes and captions, so codes of a
    retrained tokenizer train a new prior.
    """
    text = model.caption_tokens(captions, len(indices))
    data = TensorDataset(indices) if text is None else TensorDataset(indices, text.cpu())
    return fit(model, video_prior_loss, data, config, progress=progress,
               checkpoint=checkpoint_path(name, model.config, config, {"data": data_digest(*data.tensors)}))

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

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick
from vqlib.priors.text import CaptionTokenizer
from vqlib.priors.video_prior import VideoPrior, VideoPriorConfig, video_prior_loss
from vqlib.recipes.ch08_video_tokenizers import kth_clips, train_kth_tokenizer
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


# ----------------------------------------------------------------------------- the full profile's real video

KTH_TOKENIZER = dict(time_downsample=2, space_downsample=8)  # chapter 9's code grid: (T/2, S/8, S/8)


def video_prior_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of chapter 9's video prior for a profile."""
    defaults = dict(steps=pick(10, 2000, 20_000, profile=profile), batch_size=pick(8, 16, 64, profile=profile),
                    lr=pick(5e-3, 5e-3, 1e-3, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                    cosine=True, log_every=pick(5, 50, 200, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_kth_video_prior(profile: str | None = None, progress: bool | None = None) -> tuple[VideoPrior, History]:
    """Chapter 9's caption-conditioned prior on real video, cached: chapter 8's 3D tokenizer trained on
    KTH clips (``train_kth_tokenizer``, chapter 9's code grid), then the prior on the codes of the
    training clips with their actions as captions ("a person boxes"). The ``full`` profile's real-video
    run; chapter 9's judge (a tracker of digits and headings) reads Moving MNIST only."""
    tokenizer, _ = train_kth_tokenizer(profile, progress, **KTH_TOKENIZER)
    train = kth_clips("train", profile)
    codes = in_batches(tokenizer.encode, tokenizer, train.videos)  # (N, t, h, w) long
    words = CaptionTokenizer.fit(train.captions)
    prior = VideoPrior(VideoPriorConfig.for_profile(tokenizer.config.codebook_size, tokenizer.latent_shape,
                                                    words, profile=profile))
    history = train_video_prior(prior, codes, train.captions, video_prior_train_config(profile),
                                "ch9-kth-video-prior", progress=progress)
    return prior, history

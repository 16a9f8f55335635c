"""Chapter 8: training and scoring video tokenizers, and the Moving MNIST recipes.

What is in it: ``psnr_per_frame``, ``reconstruct_with_indices`` (reconstructions and code grids of
many clips) and ``evaluate_video_vqvae`` (PSNR per frame, codebook usage, perplexity);
``train_video_vqvae`` (``vqlib.training.loop.fit`` with the VQ-VAE loss, cached by name, configs,
profile and a digest of the training set); chapter 8's clips (``CLIP_SIZES``,
``moving_mnist_clips``), its three tokenizers at equal bits (``equal_bits_configs``), the
recipes of ``scripts/train.py``, the ``full`` profile's real video (``kth_clips``,
``train_kth_tokenizer``, ``evaluate_kth_tokenizer``, ``psnr_per_clip``, ``one_clip_per_action``),
and the ablation of where time is mixed (``TIME_MIXING``,
``time_mixing_configs``, ``time_mixing_train_config``, ``train_time_mixing_tokenizer``).

Dimension key: N clips, T frames, C channels, H W frame size, S frame side, t h w code-grid size, A actions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import evaluating, in_batches
from vqlib.core.metrics import code_counts, codebook_usage, perplexity
from vqlib.core.profile import pick, seed_everything
from vqlib.data.kth import ACTIONS, KTH, kth
from vqlib.tokenizers.video import FrameVQVAE, VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqvae import vqvae_loss
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.loop import History, TrainConfig, fit


def psnr_per_frame(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, range 1) of every frame: x, x_hat (B, T, C, H, W) -> (B, T). x_hat is clipped to [0, 1]."""
    if x.shape != x_hat.shape or x.dim() != 5:
        raise ValueError(f"x and x_hat must be videos (B, T, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(x_hat.shape)}")
    mse = (x.float() - x_hat.float().clamp(0, 1)).pow(2).flatten(2).mean(2).clamp_min(1e-12)  # (B, T)
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def reconstruct_with_indices(model: nn.Module, videos: torch.Tensor,
                             batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat (N, T, C, H, W), indices (N, t, h, w)) of ``videos`` from one forward pass in eval mode, in batches."""
    device = model_device(model)
    x_hats, indices = [], []
    with evaluating(model):
        for start in range(0, len(videos), batch_size):
            out = model(to_device(videos[start:start + batch_size], device))
            x_hats.append(out.x_hat.cpu())
            indices.append(out.indices.cpu())
    return torch.cat(x_hats), torch.cat(indices)


@torch.no_grad()
def evaluate_video_vqvae(model: nn.Module, videos: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean per-frame PSNR (dB), codebook usage and perplexity over all of ``videos``."""
    x_hat, indices = reconstruct_with_indices(model, videos, batch_size)
    counts = code_counts(indices, model.config.codebook_size)
    return {"psnr": psnr_per_frame(videos, x_hat).mean().item(), "usage": codebook_usage(counts),
            "perplexity": perplexity(counts)}


def video_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The training budget of a video tokenizer for a profile."""
    defaults = dict(steps=pick(4, 250, 20_000, profile=profile), batch_size=pick(4, 16, 32, profile=profile),
                    lr=2e-3, cosine=True, warmup_steps=pick(0, 20, 500, profile=profile),
                    log_every=pick(2, 25, 100, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_video_vqvae(videos_train: torch.Tensor, config: VideoVQVAEConfig, name: str,
                      eval_videos: torch.Tensor | None = None, profile: str | None = None,
                      progress: bool | None = None, frame_wise: bool = False,
                      train_config: TrainConfig | None = None, **train_overrides) -> tuple[nn.Module, History]:
    """Train a ``VideoVQVAE`` (or, with ``frame_wise=True``, a ``FrameVQVAE``) on videos (N, T, C, H, W).

    Trained once per name, configs, profile and training set, then loaded from the checkpoint cache.
    The budget is ``train_config`` (default: ``video_train_config(profile)``), with
    ``train_overrides`` setting its fields (steps, batch_size, lr, ...). With ``eval_videos`` the
    history ends with their PSNR, codebook usage and perplexity.
    Returns the model in eval mode and its History.
    """
    model_class = FrameVQVAE if frame_wise else VideoVQVAE
    train_config = dataclasses.replace(train_config or video_train_config(profile), **train_overrides)
    seed_everything(train_config.seed)
    model = model_class(config)
    model.check_input(videos_train)
    eval_fn: Callable | None = None
    if eval_videos is not None:
        model.check_input(eval_videos)
        eval_fn = lambda m: evaluate_video_vqvae(m, eval_videos)  # noqa: E731
    path = checkpoint_path(name, config, train_config, {"data": data_digest(videos_train)}, profile=profile)
    history = fit(model, vqvae_loss, TensorDataset(videos_train), train_config, eval_fn=eval_fn,
                  checkpoint=path, progress=progress)
    return model, history


# ----------------------------------------------------------------------------- chapter 8's recipes

CLIP_SIZES = {"smoke": dict(frames=4, size=16, digit_size=8), "quick": dict(frames=8, size=32, digit_size=14),
              "full": dict(frames=16, size=64, digit_size=28)}  # chapter 8's Moving MNIST clips per profile


def moving_mnist_clips(split: str = "train", profile: str | None = None) -> torch.Tensor:
    """Chapter 8's Moving MNIST clips (N, T, 1, S, S) of two digits, sized by ``CLIP_SIZES[profile]``.

    In ``full`` the test clips are the first 16 frames of the published test set (Srivastava et
    al. 2015); otherwise both splits are generated by ``vqlib.data.mnist.moving_mnist`` from the digits of
    that split.
    """
    from vqlib.data.mnist import moving_mnist, published_moving_mnist

    sizes = pick(CLIP_SIZES["smoke"], CLIP_SIZES["quick"], CLIP_SIZES["full"], profile=profile)
    if split == "test" and pick(False, False, True, profile=profile):
        return published_moving_mnist()[:, :sizes["frames"]]
    n = pick(dict(train=16, val=8, test=8), dict(train=768, val=128, test=128),
             dict(train=20_000, val=1000, test=1000), profile=profile)[split]
    return moving_mnist(split, n=n, profile=profile, **sizes).videos


def equal_bits_configs(profile: str | None = None, **overrides) -> dict[str, VideoVQVAEConfig]:
    """Chapter 8's three tokenizers, all at the same bits per clip.

    "3d" and "attention" code (T/2, S/4, S/4) with K codes; "frame" codes (T, S/4, S/4) with
    sqrt(K) codes: twice the positions at half the bits per position.
    """
    base = VideoVQVAEConfig.for_profile(profile, channels=1, **overrides)
    k_frame = math.isqrt(base.codebook_size)
    if k_frame ** 2 != base.codebook_size or base.time_downsample != 2:
        raise ValueError(f"equal bits need time_downsample=2 and a square codebook_size, got "
                         f"{base.time_downsample} and {base.codebook_size}")
    return {"3d": base, "attention": dataclasses.replace(base, temporal="attention"),
            "frame": dataclasses.replace(base, time_downsample=1, codebook_size=k_frame)}


def train_moving_mnist_tokenizer(kind: str = "3d", profile: str | None = None,
                                 progress: bool | None = None, **train_overrides) -> tuple[nn.Module, History]:
    """Chapter 8's tokenizer ``kind`` ("3d", "attention" or "frame") on its Moving MNIST clips, cached."""
    configs = equal_bits_configs(profile)
    if kind not in configs:
        raise ValueError(f"kind must be one of {sorted(configs)}, got {kind!r}")
    return train_video_vqvae(moving_mnist_clips("train", profile), configs[kind], f"ch8-mmnist-{kind}",
                             eval_videos=moving_mnist_clips("val", profile)[:64], profile=profile,
                             progress=progress, frame_wise=kind == "frame", **train_overrides)


def train_moving_mnist_frame_vqvae() -> tuple[nn.Module, History]:
    """``train_moving_mnist_tokenizer("frame")``: a recipe of scripts/train.py."""
    return train_moving_mnist_tokenizer("frame")


def train_moving_mnist_attention_vqvae() -> tuple[nn.Module, History]:
    """``train_moving_mnist_tokenizer("attention")``: a recipe of scripts/train.py."""
    return train_moving_mnist_tokenizer("attention")


# ----------------------------------------------------------------------------- the full profile's real video

def kth_clips(split: str = "train", profile: str | None = None) -> KTH:
    """KTH actions (``vqlib.data.kth``: real video of people, a download of about 1.1 GB) of ``split``'s
    people, clips sized like ``moving_mnist_clips``: videos (N, T, 1, S, S) with their captions."""
    sizes = pick(CLIP_SIZES["smoke"], CLIP_SIZES["quick"], CLIP_SIZES["full"], profile=profile)
    return kth(split, frames=sizes["frames"], size=sizes["size"])


def train_kth_tokenizer(profile: str | None = None, progress: bool | None = None,
                        **config_overrides) -> tuple[nn.Module, History]:
    """Chapter 8's 3D tokenizer (``equal_bits_configs``, ``config_overrides`` set its fields) trained
    on KTH clips instead of Moving MNIST, cached: the ``full`` profile's real-video run."""
    config = equal_bits_configs(profile, **config_overrides)["3d"]
    return train_video_vqvae(kth_clips("train", profile).videos, config, "ch8-kth-3d",
                             eval_videos=kth_clips("val", profile).videos[:64], profile=profile, progress=progress)


def one_clip_per_action(clips: KTH) -> torch.Tensor:
    """The middle clip of each action, in ``ACTIONS`` order -> indices (A,) long into ``clips``."""
    picked = []
    for a, action in enumerate(ACTIONS):
        where = (clips.actions == a).nonzero().flatten()  # (n,) the clips of this action
        if not len(where):
            raise ValueError(f"these clips hold no {action!r} clip; one_clip_per_action needs all of {ACTIONS}")
        picked.append(where[len(where) // 2])
    return torch.stack(picked)


@torch.no_grad()
def psnr_per_clip(model: nn.Module, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Mean per-frame PSNR (dB, ``psnr_per_frame``) of each clip of videos (N, T, C, H, W) as coded by
    ``model`` -> (N,), in batches, so that no reconstruction of the whole set is ever held."""
    return in_batches(lambda x: psnr_per_frame(x, model(x).x_hat).mean(1), model, videos, batch_size)  # (N,)


@dataclasses.dataclass(frozen=True)
class KTHTokenizerResults:
    """What chapter 8 shows of its 3D tokenizer on KTH: scores of the test clips and one clip per action."""

    psnr: torch.Tensor  # (N,) mean per-frame PSNR (dB) of every test clip
    videos: torch.Tensor  # (A, T, 1, S, S) one test clip per action (``one_clip_per_action``)
    x_hat: torch.Tensor  # (A, T, 1, S, S) their reconstructions, clipped to [0, 1]
    steps: int  # training steps


def evaluate_kth_tokenizer(profile: str | None = None, progress: bool | None = None) -> KTHTokenizerResults:
    """Chapter 8's 3D tokenizer trained on KTH (``train_kth_tokenizer``) and scored on the test people's clips,
    as the chapter scores it on Moving MNIST. Downloads KTH (about 1.1 GB) once: the ``full`` profile's run."""
    model, history = train_kth_tokenizer(profile, progress)
    test = kth_clips("test", profile)
    videos = test.videos[one_clip_per_action(test)]  # (A, T, 1, S, S)
    x_hat, _ = reconstruct_with_indices(model, videos)
    return KTHTokenizerResults(psnr=psnr_per_clip(model, test.videos), videos=videos, x_hat=x_hat.clamp(0, 1),
                               steps=history.steps)


# ----------------------------------------------------------------------------- the ablation: where time is mixed

TIME_MIXING = {"none": "attention-none", "encoder": "attention-encoder", "decoder": "attention-decoder",
               "both": "attention"}  # where frames attend to each other -> VideoVQVAEConfig.temporal


def time_mixing_configs(profile: str | None = None, **overrides) -> dict[str, VideoVQVAEConfig]:
    """Chapter 8's ablation: the (2+1)D tokenizer with attention across frames in neither part, the
    encoder, the decoder or both (keys of ``TIME_MIXING``), and otherwise the same network.

    All four code the frame-by-frame grid of ``equal_bits_configs`` (T, S/4, S/4) with sqrt(K) codes:
    the same codes per clip, the bits of the chapter's three tokenizers, and, at time_downsample=1,
    no temporal convolution. Their attention blocks have the same parameters (``FrameLocalAttention``
    where frames are not mixed). ``overrides`` set fields of all four; the widths are the chapter's
    in smoke and full, narrower in quick, where four more models must fit the page's CPU budget.
    """
    sizes = pick(smoke={}, quick=dict(hidden=32, res_hidden=16), full={}, profile=profile)
    frame = equal_bits_configs(profile, **{**sizes, **overrides})["frame"]
    return {where: dataclasses.replace(frame, temporal=temporal) for where, temporal in TIME_MIXING.items()}


def time_mixing_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The budget of each arm of the ablation: ``video_train_config``, with smaller batches in quick."""
    budget = dict(steps=pick(4, 200, 20_000, profile=profile), batch_size=pick(4, 8, 32, profile=profile))
    return video_train_config(profile, **{**budget, **overrides})


def train_time_mixing_tokenizer(where: str = "both", profile: str | None = None, progress: bool | None = None,
                                **train_overrides) -> tuple[nn.Module, History]:
    """One arm of the ablation (``where``: "none", "encoder", "decoder" or "both") on chapter 8's
    Moving MNIST clips, trained with ``time_mixing_train_config`` and cached."""
    configs = time_mixing_configs(profile)
    if where not in configs:
        raise ValueError(f"where must be one of {list(configs)}, got {where!r}")
    return train_video_vqvae(moving_mnist_clips("train", profile), configs[where], f"ch8-time-mixing-{where}",
                             eval_videos=moving_mnist_clips("val", profile)[:64], profile=profile,
                             progress=progress, train_config=time_mixing_train_config(profile, **train_overrides))

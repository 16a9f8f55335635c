"""A super-resolution stage for a video tokenizer: the clip its codes decode to, at r× the side.

The hierarchical route to resolution keeps a coarse level of codes, which a prior generates, and
adds a finer level conditioned on it: VQ-VAE-2 for images (Razavi et al. 2019, chapter 4), and
for video Walker, Razavi and van den Oord (2021, "Predicting video with VQVAE"), who code
256×256 clips in two levels and generate the fine codes with a second prior conditioned on the
coarse ones. This file is the smallest step on that route: a conditional decoder, with no second
level of codes and no second prior. It reads the low-resolution clip that the coarse codes decode
to, (B, T, C, S, S), and those codes' vectors z_q (B, D, t, h, w), and predicts the clip at r·S:
the bicubic enlargement of the decoded clip plus a learned correction. The correction is computed
by convolutions at the low resolution and rearranged into r×r sub-pixels at the end (the
sub-pixel convolution of ESPCN, Shi et al. 2016), so it costs about what a network on the small
clip costs.

Trained on pairs (the coarse decoding of a real clip shrunk r times, the real clip), it learns
what the codes say about detail that the coarse decoder cannot draw at S×S. It cannot invent
detail that the codes do not carry, and it draws nothing at random: given the codes, its output
is fixed. A second level of codes and a prior over them (Walker et al.) would let it sample that
detail instead.

What is in it: ``SuperResConfig``, ``VideoSuperRes`` (x_low, z_q -> x_high) and ``superres_loss``
(squared error against the real clip, the likelihood of a Gaussian decoder). The training recipe is
chapter 9's (``vqlib.recipes.ch09_video_generation.train_super_resolution``).

Left out: adversarial and perceptual losses (sharper but lower PSNR; chapter 5 discusses the
trade), temporal convolutions (each frame is corrected on its own; the codes carry the time
context they share), and a second level of codes.

Dimension key: B batch, T frames, C channels, S low-resolution side, r scale, F hidden channels,
D code dim, t h w code-grid size (T/ft, S/fs, S/fs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.nn import check_dtype
from vqlib.core.pixels import enlarge
from vqlib.core.profile import pick


@dataclass(frozen=True)
class SuperResConfig:
    code_dim: int  # D: width of the tokenizer's code vectors
    time_downsample: int  # ft: one latent frame of codes covers ft frames
    space_downsample: int  # fs: one code covers fs×fs pixels of the low-resolution clip
    channels: int = 1  # C
    scale: int = 2  # r: the output side is r·S
    hidden: int = 32  # F: channels of the convolutions
    layers: int = 3  # 3×3 convolutions at the low resolution, the last one to C·r² sub-pixels

    def __post_init__(self) -> None:
        for name in ("code_dim", "time_downsample", "space_downsample", "channels", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scale < 2 or self.layers < 2:
            raise ValueError(f"need scale >= 2 and layers >= 2, got scale={self.scale}, layers={self.layers}")

    @classmethod
    def for_profile(cls, code_dim: int, time_downsample: int, space_downsample: int, channels: int = 1,
                    profile: str | None = None, **overrides) -> "SuperResConfig":
        """The book's size for ``profile`` (default: the current one); ``overrides`` set any field."""
        sizes = pick(smoke=dict(hidden=8, layers=2), quick=dict(hidden=16, layers=3),
                     full=dict(hidden=64, layers=5), profile=profile)
        return dataclasses.replace(cls(code_dim, time_downsample, space_downsample, channels, **sizes), **overrides)


class VideoSuperRes(nn.Module):
    """x_low (B, T, C, S, S) in [0, 1] and z_q (B, D, T/ft, S/fs, S/fs) -> x_high (B, T, C, r·S, r·S).

    x_high = enlarge(x_low, r) + correction: the correction reads every frame and its latent
    frame's code vectors (each code spread over its fs×fs pixels). The output is not clipped (a
    linear output, as the tokenizers'); clip it to [0, 1] to show or score it.
    """

    def __init__(self, config: SuperResConfig) -> None:
        super().__init__()
        self.config = config
        c, f, r = config.channels, config.hidden, config.scale
        self.pixels = nn.Conv2d(c, f, 3, padding=1)  # the decoded frame -> (B·T, F, S, S)
        self.codes = nn.Conv2d(config.code_dim, f, 1)  # code vectors -> (B·T, F, h, w), added to it
        body = [m for _ in range(config.layers - 2) for m in (nn.ReLU(), nn.Conv2d(f, f, 3, padding=1))]
        self.body = nn.Sequential(*body, nn.ReLU(), nn.Conv2d(f, c * r * r, 3, padding=1))  # (B·T, C·r², S, S)
        self.shuffle = nn.PixelShuffle(r)  # (B·T, C·r², S, S) -> (B·T, C, r·S, r·S)

    def check(self, x_low: torch.Tensor, z_q: torch.Tensor) -> None:
        cfg = self.config
        if not torch.is_tensor(x_low) or not x_low.is_floating_point() or x_low.dim() != 5 \
                or x_low.shape[2] != cfg.channels or len(x_low) == 0:
            got = tuple(x_low.shape) if torch.is_tensor(x_low) else type(x_low).__name__
            raise ValueError(f"x_low must be float clips (B, T, {cfg.channels}, S, S) with B >= 1, got {got}")
        check_dtype(x_low, next(self.parameters()).dtype, "x_low")
        b, t, _, s, s2 = x_low.shape
        expected = (b, cfg.code_dim, t // cfg.time_downsample, s // cfg.space_downsample, s2 // cfg.space_downsample)
        if t % cfg.time_downsample or s % cfg.space_downsample or s2 % cfg.space_downsample:
            raise ValueError(f"x_low {tuple(x_low.shape)} must have T a multiple of {cfg.time_downsample} and "
                             f"H, W multiples of {cfg.space_downsample}, the tokenizer's strides")
        if not torch.is_tensor(z_q) or tuple(z_q.shape) != expected:
            got = tuple(z_q.shape) if torch.is_tensor(z_q) else type(z_q).__name__
            raise ValueError(f"z_q must be the code vectors (B, D, t, h, w) = {expected} of x_low's codes "
                             f"(tokenizer.quantizer.decode_indices(indices)), got {got}")

    def forward(self, x_low: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        self.check(x_low, z_q)
        cfg = self.config
        b, t, c, s, _ = x_low.shape
        frames = x_low.flatten(0, 1)  # (B·T, C, S, S)
        codes = z_q.repeat_interleave(cfg.time_downsample, dim=2).transpose(1, 2).flatten(0, 1)  # (B·T, D, h, w)
        codes = F.interpolate(self.codes(codes), scale_factor=cfg.space_downsample, mode="nearest")  # (B·T, F, S, S)
        correction = self.shuffle(self.body(self.pixels(frames) + codes))  # (B·T, C, r·S, r·S)
        return enlarge(x_low, cfg.scale) + correction.view(b, t, c, cfg.scale * s, -1)  # (B, T, C, r·S, r·S)


def superres_loss(model: VideoSuperRes, batch: tuple) -> dict[str, torch.Tensor]:
    """Mean squared error of a batch (x_low, z_q, x_high) against the real high-resolution clips,
    with the bicubic enlargement's error for the log (the baseline the stage must beat)."""
    x_low, z_q, x_high = batch
    loss = F.mse_loss(model(x_low, z_q), x_high)
    return {"loss": loss, "bicubic_mse": F.mse_loss(enlarge(x_low, model.config.scale), x_high).detach()}

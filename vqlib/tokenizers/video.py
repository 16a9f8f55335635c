"""Video tokenizers: VQ-VAEs that turn a clip into a small grid of discrete codes.

Paper: Yan, Zhang, Abbeel and Srinivas, "VideoGPT: Video Generation using VQ-VAE and Transformers"
(2021). Its tokenizer is the VQ-VAE of van den Oord et al. (2017) with 3D convolutions: strided
Conv3d layers shrink time *and* space, so a clip (T, H, W) becomes a code grid (T/ft, H/fs, W/fs),
and one EMA codebook quantises every position. The decoder mirrors the encoder with transposed
3D convolutions. A GPT over the flattened code grid then generates video (chapter 9).

What is in it:

- ``VideoVQVAEConfig``: sizes of the clip (frames, size, channels), the two downsampling factors,
  the codebook, and how the model mixes time (``temporal``):
  ``"conv3d"``: 3D convolutions throughout (VideoGPT);
  ``"attention"``: 2D convolutions on each frame, then self-attention across frames at each
  position and strided temporal convolutions in the bottleneck (a factorised (2+1)D design);
  ``"attention-encoder"``, ``"attention-decoder"``, ``"attention-none"``: the same network with
  attention across frames in the encoder only, the decoder only, or neither; the other attention
  blocks are ``FrameLocalAttention`` (the same parameters, each frame attending to itself). With
  time_downsample=1 no temporal convolution mixes frames either, and the four differ only in
  where time is mixed (chapter 8's ablation).
- ``VideoVQVAE``: videos (B, T, C, S, S) -> codes (B, t, h, w) -> videos, with ``encode``/``decode``
  (the encode -> quantize -> decode shell of ``vqlib.tokenizers.base``); ``check_videos``, its input check.
- ``FrameVQVAE``: the baseline that codes every frame on its own with the chapter 2 ``VQVAE``
  (no temporal modelling: t = T), with the same interface.
Training, scores and chapter 8's recipes are in ``vqlib.recipes.ch08_video_tokenizers``.

Left out: VideoGPT's axial-attention residual blocks inside the 3D stacks (plain 3D residual
blocks here, cheaper on a CPU), and its paper-scale widths and codebooks (sizes come by profile).

Dimension key: B batch, T frames, C channels, H W = S frame height and width, ft fs temporal and
spatial downsampling factors, t h w = T/ft, H/fs, W/fs code-grid size, F hidden channels,
D code dim, K codebook size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vqlib.core.nn import check_dtype
from vqlib.core.profile import pick
from vqlib.quantizers.factory import make_quantizer
from vqlib.tokenizers.base import Tokenizer, TokenizerOutput, check_index_rank
from vqlib.tokenizers.vqvae import VQVAE, Decoder, Encoder, VQVAEConfig

# The (2+1)D designs: temporal -> the parts whose attention reads across frames. In the other
# part the attention block is FrameLocalAttention, so all four have the same parameters.
ATTENTION_ACROSS_FRAMES = {"attention": ("encoder", "decoder"), "attention-encoder": ("encoder",),
                           "attention-decoder": ("decoder",), "attention-none": ()}
TEMPORAL = ("conv3d", *ATTENTION_ACROSS_FRAMES)


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class VideoVQVAEConfig:
    frames: int = 16  # T: frames per clip (VideoGPT: 16)
    size: int | tuple[int, int] = 64  # S: frames are S×S pixels, or (H, W) for other shapes
    channels: int = 1  # C: 1 for Moving MNIST, 3 for colour video
    hidden: int = 128  # F: channels of the encoder and decoder
    res_hidden: int = 32  # channels inside a residual block
    res_blocks: int = 2  # residual blocks in the encoder and in the decoder (VideoGPT: 4)
    time_downsample: int = 2  # ft: t = T/ft; a power of 2, 1 = no temporal downsampling
    space_downsample: int = 4  # fs: h = S/fs; a power of 2 >= 2
    codebook_size: int = 512  # K (VideoGPT uses larger codebooks)
    code_dim: int = 64  # D
    beta: float = 0.25  # commitment weight (van den Oord et al. 2017)
    decay: float = 0.99  # EMA decay of the codebook statistics
    temporal: str = "conv3d"  # how frames are mixed: "conv3d" (VideoGPT), "attention" ((2+1)D), ... (TEMPORAL)
    heads: int = 4  # attention heads (the "attention" designs only); must divide hidden

    def __post_init__(self) -> None:
        for name in ("frames", "channels", "hidden", "res_hidden", "codebook_size", "code_dim", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.res_blocks < 0:
            raise ValueError(f"res_blocks must be >= 0, got {self.res_blocks}")
        if not _power_of_two(self.time_downsample):
            raise ValueError(f"time_downsample must be a power of 2 (1, 2, 4, ...), got {self.time_downsample}")
        if not _power_of_two(self.space_downsample) or self.space_downsample < 2:
            raise ValueError(f"space_downsample must be a power of 2 >= 2, got {self.space_downsample}")
        if self.frames % self.time_downsample:
            raise ValueError(f"frames={self.frames} must be a multiple of time_downsample={self.time_downsample}")
        if not isinstance(self.size, int) and len(self.size) != 2:
            raise ValueError(f"size must be an int S (S×S frames) or a pair (H, W), got {self.size!r}")
        if min(self.frame_size) < 1 or any(n % self.space_downsample for n in self.frame_size):
            raise ValueError(f"size={self.size} must be positive multiples of space_downsample={self.space_downsample}")
        if self.temporal not in TEMPORAL:
            raise ValueError(f"temporal must be one of {TEMPORAL}, got {self.temporal!r}")
        if self.temporal != "conv3d" and self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads} for "
                             f"temporal={self.temporal!r}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> VideoVQVAEConfig:
        """The book's size for a profile (default: the current one); ``overrides`` set any field,
        e.g. ``for_profile(frames=8, size=32, channels=1, time_downsample=1)``."""
        sizes = pick(smoke=dict(frames=4, size=16, hidden=16, res_hidden=8, res_blocks=1, codebook_size=16,
                                code_dim=8),
                     quick=dict(frames=8, size=32, hidden=48, res_hidden=24, res_blocks=1, codebook_size=256,
                                code_dim=32),
                     full=dict(frames=16, size=64, hidden=128, res_hidden=64, res_blocks=2, codebook_size=1024,
                               code_dim=64),
                     profile=profile)
        return cls(**{**sizes, **overrides})

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of a frame."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(t, h, w) of the code grid of one clip."""
        h, w = self.frame_size
        return self.frames // self.time_downsample, h // self.space_downsample, w // self.space_downsample

    @property
    def bits(self) -> float:
        """Bits of one clip's code grid under a uniform code distribution: t·h·w·log2 K."""
        return math.prod(self.latent_shape) * math.log2(self.codebook_size)


# ----------------------------------------------------------------------------- 3D blocks

class ResBlock3d(nn.Module):
    """The chapter 2 residual block in 3D: x + conv1×1×1(relu(conv3×3×3(relu(x)))). (B, F, T, H, W) -> same."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv3d(channels, hidden, kernel_size=3, padding=1),
                                  nn.ReLU(), nn.Conv3d(hidden, channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def res_stack3d(channels: int, hidden: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock3d(channels, hidden) for _ in range(blocks)), nn.ReLU())


def strides(config: VideoVQVAEConfig) -> list[tuple[int, int]]:
    """(time, space) stride of each down- (or, reversed, up-) sampling layer: 2 until a factor is reached."""
    nt, ns = int(math.log2(config.time_downsample)), int(math.log2(config.space_downsample))
    return [(2 if i < nt else 1, 2 if i < ns else 1) for i in range(max(nt, ns))]


def _kernel(stride: int) -> int:
    return 4 if stride == 2 else 3  # with padding 1: halves (or doubles) exactly, or keeps the size


def conv3d_down(c_in: int, c_out: int, st: int, ss: int) -> nn.Conv3d:
    """(B, c_in, T, H, W) -> (B, c_out, T/st, H/ss, W/ss), st and ss in {1, 2}."""
    return nn.Conv3d(c_in, c_out, kernel_size=(_kernel(st), _kernel(ss), _kernel(ss)), stride=(st, ss, ss), padding=1)


def conv3d_up(c_in: int, c_out: int, st: int, ss: int) -> nn.ConvTranspose3d:
    """(B, c_in, t, h, w) -> (B, c_out, t·st, h·ss, w·ss): the transpose of ``conv3d_down``."""
    return nn.ConvTranspose3d(c_in, c_out, kernel_size=(_kernel(st), _kernel(ss), _kernel(ss)),
                              stride=(st, ss, ss), padding=1)


def _ladder(config: VideoVQVAEConfig) -> list[int]:
    n = len(strides(config))  # channels C, F/2, ..., F/2, F as in chapter 2's channel_ladder
    return [config.channels] + [config.hidden // 2] * (n - 1) + [config.hidden]


class Encoder3d(nn.Module):
    """VideoGPT's encoder: strided Conv3d (÷2 in time and/or space), Conv3d 3³, residual blocks, 1³ to D.

    videos (B, T, C, H, W) -> (B, D, t, h, w).
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        widths = _ladder(config)
        downs = [m for (c_in, c_out), (st, ss) in zip(zip(widths, widths[1:]), strides(config))
                 for m in (conv3d_down(c_in, c_out, st, ss), nn.ReLU())]
        self.net = nn.Sequential(*downs, nn.Conv3d(config.hidden, config.hidden, kernel_size=3, padding=1),
                                 res_stack3d(config.hidden, config.res_hidden, config.res_blocks),
                                 nn.Conv3d(config.hidden, config.code_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2))  # (B, D, t, h, w) from (B, C, T, H, W)


class Decoder3d(nn.Module):
    """Conv3d 3³ from D, residual blocks, transposed Conv3d (×2 in time and/or space); linear output.

    (B, D, t, h, w) -> videos (B, T, C, H, W).
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        widths = _ladder(config)[::-1]
        ups = [m for (c_in, c_out), (st, ss) in zip(zip(widths, widths[1:]), strides(config)[::-1])
               for m in (conv3d_up(c_in, c_out, st, ss), nn.ReLU())]
        self.net = nn.Sequential(nn.Conv3d(config.code_dim, config.hidden, kernel_size=3, padding=1),
                                 res_stack3d(config.hidden, config.res_hidden, config.res_blocks),
                                 *ups[:-1])  # no ReLU after the last layer

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.net(z_q).transpose(1, 2)  # (B, T, C, H, W) from (B, C, T, H, W)


# ----------------------------------------------------------------------------- (2+1)D blocks

class TemporalAttention(nn.Module):
    """Self-attention across frames at each spatial position: x + W_o·softmax(q kᵀ/√d)·v, q k v from LN(x) + pos_t.

    Multi-head attention (Vaswani et al. 2017) written out: for sequences of a few frames the
    explicit product is faster on a CPU than the fused kernel. Every frame sees every other (no
    causal mask: a tokenizer reads the whole clip). (B, F, T, h, w) -> (B, F, T, h, w), T <= max_frames.
    """

    def __init__(self, channels: int, heads: int, max_frames: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.pos = nn.Parameter(0.02 * torch.randn(max_frames, channels))  # (T, F) learned frame positions
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, f)  # (N, T, F), N = B·h·w
        qkv = self.qkv(self.norm(seq) + self.pos[:t])  # (N, T, 3F)
        q, k, v = qkv.view(-1, t, 3, self.heads, f // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (N, heads, T, F/heads)
        out = self.out(self.attend(q, k, v).transpose(1, 2).reshape(-1, t, f))  # (N, T, F)
        return x + out.view(b, h, w, t, f).permute(0, 4, 3, 1, 2)  # (B, F, T, h, w)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ/√d)·v: every frame reads every frame. (N, heads, T, d) each -> (N, heads, T, d)."""
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (N, heads, T, T)
        return weights @ v


class FrameLocalAttention(TemporalAttention):
    """``TemporalAttention`` confined to each frame: the control arm of chapter 8's ablation.

    The same parameters, normalisation, frame positions and residual path, but the attention mask
    lets a frame attend only to itself: a softmax over that one entry is 1, so the output is
    x + W_o·v and no information crosses frames (q and k are computed and receive no gradient).
    (B, F, T, h, w) -> (B, F, T, h, w).
    """

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v  # the diagonal attention matrix: frame i reads frame i only


def _frame_config(config: VideoVQVAEConfig, code_dim: int) -> VQVAEConfig:
    """The chapter 2 VQ-VAE config for one frame of ``config``."""
    return VQVAEConfig(in_channels=config.channels, hidden=config.hidden, res_hidden=config.res_hidden,
                       res_blocks=config.res_blocks, downsample=config.space_downsample,
                       codebook_size=config.codebook_size, code_dim=code_dim, beta=config.beta, decay=config.decay)


def frame_attention(config: VideoVQVAEConfig, part: str) -> TemporalAttention:
    """The attention block of the (2+1)D ``part`` ("encoder" or "decoder"): ``TemporalAttention`` where
    ``config.temporal`` mixes time in that part, else ``FrameLocalAttention``."""
    across = part in ATTENTION_ACROSS_FRAMES[config.temporal]
    return (TemporalAttention if across else FrameLocalAttention)(config.hidden, config.heads, config.frames)


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    b, c, t, h, w = x.shape
    y = module(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, C', H', W')
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)  # (B, C', T, H', W')


class EncoderAttention(nn.Module):
    """2D encoder on each frame (chapter 2), attention (``frame_attention``), strided temporal convolutions, 1³ to D.

    videos (B, T, C, H, W) -> (B, D, t, h, w).
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        self.frame = Encoder(_frame_config(config, code_dim=config.hidden))
        self.attention = frame_attention(config, "encoder")
        nt = int(math.log2(config.time_downsample))
        self.time = nn.Sequential(*(m for _ in range(nt) for m in (
            nn.Conv3d(config.hidden, config.hidden, kernel_size=(4, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
            nn.ReLU())))
        self.project = nn.Conv3d(config.hidden, config.code_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.attention(per_frame(self.frame, x.transpose(1, 2)))  # (B, F, T, h, w)
        return self.project(self.time(z))  # (B, D, t, h, w)


class DecoderAttention(nn.Module):
    """1³ from D, transposed temporal convolutions, attention (``frame_attention``), 2D decoder on each frame.

    (B, D, t, h, w) -> videos (B, T, C, H, W).
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        self.project = nn.Conv3d(config.code_dim, config.hidden, kernel_size=1)
        nt = int(math.log2(config.time_downsample))
        self.time = nn.Sequential(*(m for _ in range(nt) for m in (
            nn.ReLU(),
            nn.ConvTranspose3d(config.hidden, config.hidden, kernel_size=(4, 1, 1), stride=(2, 1, 1),
                               padding=(1, 0, 0)))))
        self.attention = frame_attention(config, "decoder")
        self.frame = Decoder(_frame_config(config, code_dim=config.hidden))

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        z = self.attention(self.time(self.project(z_q)))  # (B, F, T, h, w)
        return per_frame(self.frame, z).transpose(1, 2)  # (B, T, C, H, W)


# ----------------------------------------------------------------------------- the models

def check_videos(x: torch.Tensor, config: VideoVQVAEConfig, time_factor: int, max_frames: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """Raise a clear error unless x is a finite float (B, T, C, H, W) batch in [0, 1] the model can take
    (of the weights' ``dtype``, when given)."""
    c, fs = config.channels, config.space_downsample
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"videos must be a floating-point tensor in [0, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}; convert uint8 frames with x.float() / 255")
    check_dtype(x, dtype, "videos")
    if x.dim() != 5 or x.shape[2] != c:
        hint = " (channels first? vqlib videos are (B, T, C, H, W), frames before channels)" \
            if x.dim() == 5 and x.shape[1] == c else ""
        raise ValueError(f"videos must have shape (B, T, {c}, H, W), got {tuple(x.shape)}{hint}")
    b, t, _, h, w = x.shape
    if b == 0:
        raise ValueError("videos is an empty batch")
    if t == 0 or t % time_factor:
        raise ValueError(f"the number of frames must be a positive multiple of the temporal downsampling "
                         f"factor {time_factor}, got T={t}: crop or pad to {max(time_factor, -(-t // time_factor) * time_factor)}")
    if max_frames is not None and t > max_frames:
        raise ValueError(f"this model attends over at most frames={max_frames} frames, got T={t}")
    if h == 0 or w == 0 or h % fs or w % fs:
        raise ValueError(f"H and W must be positive multiples of the spatial downsampling factor {fs}, got "
                         f"{h}×{w}: pad or crop to {max(fs, -(-h // fs) * fs)}×{max(fs, -(-w // fs) * fs)}")
    low, high = float(x.min()), float(x.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"videos contain NaN or inf ({int((~torch.isfinite(x)).sum())} values)")
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"video values must lie in [0, 1], got [{low:.3g}, {high:.3g}]"
                         + ("; divide 8-bit frames by 255" if high > 2 else ""))


class VideoVQVAE(Tokenizer):
    """videos (B, T, C, H, W) in [0, 1] -> TokenizerOutput(x_hat, loss, indices (B, t, h, w), z_e, z_q).

    ``encode``: videos -> indices (B, t, h, w); ``decode``: indices -> videos (B, t·ft, C, h·fs, w·fs)
    (``vqlib.tokenizers.base.Tokenizer``). T must be a multiple of ft and H, W multiples of fs
    (any size for temporal="conv3d"; at most ``config.frames`` frames for the "attention" designs, whose
    frame positions are learned).
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder3d(config) if config.temporal == "conv3d" else EncoderAttention(config)
        self.quantizer = make_quantizer("ema", config.code_dim, codebook_size=config.codebook_size, beta=config.beta,
                                        decay=config.decay)
        self.decoder = Decoder3d(config) if config.temporal == "conv3d" else DecoderAttention(config)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(t, h, w) of the code grid of a clip of config.frames frames of config.frame_size pixels."""
        return self.config.latent_shape

    def check_input(self, x: torch.Tensor) -> None:
        check_videos(x, self.config, self.config.time_downsample,
                     None if self.config.temporal == "conv3d" else self.config.frames, next(self.parameters()).dtype)

    def check_index_shape(self, indices: torch.Tensor) -> None:
        check_index_rank(indices, 4, "(B, t, h, w) code grid")


class FrameVQVAE(nn.Module):
    """The frame-by-frame baseline: chapter 2's VQVAE on every frame, no temporal modelling.

    videos (B, T, C, H, W) -> TokenizerOutput(x_hat, loss, indices (B, T, h, w), z_e, z_q (B, D, T, h, w)),
    with ``encode`` and ``decode`` as ``VideoVQVAE``'s. The encode -> quantize -> decode shell is
    the inner ``VQVAE``'s (``self.vqvae``), which sees the frames as one batch of images. The
    config must have time_downsample=1 (one code map per frame); ``temporal`` is not used.
    """

    def __init__(self, config: VideoVQVAEConfig) -> None:
        super().__init__()
        if config.time_downsample != 1:
            raise ValueError(f"FrameVQVAE codes every frame on its own: its config needs time_downsample=1, "
                             f"got {config.time_downsample}")
        self.config = config
        self.vqvae = VQVAE(_frame_config(config, code_dim=config.code_dim))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def check_input(self, x: torch.Tensor) -> None:
        check_videos(x, self.config, 1)

    def check_index_shape(self, indices: torch.Tensor) -> None:
        check_index_rank(indices, 4, "(B, T, h, w) code grid")

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self.check_input(x)
        b, t = x.shape[:2]
        out = self.vqvae(x.flatten(0, 1))  # frames as a batch: (B·T, C, H, W)
        z_e, z_q = (z.view(b, t, *z.shape[1:]).transpose(1, 2) for z in (out.z_e, out.z_q))  # (B, D, T, h, w)
        return TokenizerOutput(out.x_hat.view(x.shape), out.loss, out.indices.view(b, t, *out.indices.shape[1:]),
                               z_e, z_q)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """videos (B, T, C, H, W) -> indices (B, T, h, w)."""
        self.check_input(x)
        indices = self.vqvae.encode(x.flatten(0, 1))  # (B·T, h, w)
        return indices.view(x.shape[0], x.shape[1], *indices.shape[1:])

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, T, h, w) long -> videos (B, T, C, h·fs, w·fs)."""
        self.check_index_shape(indices)
        b, t = indices.shape[:2]
        frames = self.vqvae.decode(indices.flatten(0, 1))  # (B·T, C, H, W)
        return frames.view(b, t, *frames.shape[1:])

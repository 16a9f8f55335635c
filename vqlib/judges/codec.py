"""A standard video codec as the yardstick for video tokenizers: H.264 through PyAV, and code bits.

H.264/AVC (ITU-T Rec. H.264; overview: Wiegand, Sullivan, Bjøntegaard and Luthra 2003) is one
of the most widely used video codecs; here it is FFmpeg's libx264 encoder, called through PyAV. A
video tokenizer is also a lossy codec: its code grid is the bitstream and its decoder network is
the decompressor. This file measures both in the same units: **bits per pixel** (bpp, bits of the
stream divided by the frames × height × width of the video; a pixel holds all its channels) and
PSNR (mean over frames).

What is in it:

- ``h264_roundtrip(videos, qp)``: encode clips at a constant quantiser ``qp`` (0 lossless ... 51
  coarsest), decode them, and count the bits of the H.264 stream;
- ``rate_distortion`` / ``bpp_at_psnr``: the codec's bpp-PSNR curve over a range of qp, and the
  bpp it needs for a given PSNR (interpolated on the curve); ``match_psnr``: the coarsest qp that
  reaches a given PSNR, by bisection; ``header_bits``: the fixed cost of a stream;
- ``uniform_code_bits`` and ``entropy_code_bits``: the bits of a tokenizer's codes, t·h·w·log2 K
  per clip, or what a static arithmetic coder spends with code frequencies counted on training
  codes (add-one smoothed);
- ``bits_per_pixel``.

How the streams are counted: all clips go into one H.264 stream whose every clip starts with an
IDR frame (keyframe interval T, no scene-cut detection, closed GOPs), so that each clip decodes on
its own, as a tokenizer's code grid does. The bits are the encoded packets of that elementary
stream: parameter sets repeated at every IDR frame are included, as is x264's one-off text header
(a few hundred bytes, spread over all clips); no container (MP4) overhead. Neither count includes
the decoder itself: libx264's decoder is a standard, a tokenizer's decoder is a network whose
weights the receiver must already have.

Left out: B-frame and rate-control tuning (x264's ``medium`` preset defaults), two-pass encoding.

Dimension key: N clips, T frames, C channels (1 or 3), H W height and width, t h w code-grid size.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple, Sequence

import numpy as np
import torch


class CodecResult(NamedTuple):
    x_hat: torch.Tensor  # (N, T, C, H, W) decoded clips in [0, 1]
    bits: int  # bits of the whole encoded stream (all N clips)


def _check_clips(videos: torch.Tensor) -> None:
    if not torch.is_tensor(videos) or not videos.is_floating_point() or videos.dim() != 5:
        raise ValueError(f"videos must be a float tensor (N, T, C, H, W) in [0, 1], got "
                         f"{tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__}")
    n, t, c, h, w = videos.shape
    if n == 0 or t == 0:
        raise ValueError(f"videos is empty: shape {tuple(videos.shape)}")
    if c not in (1, 3):
        raise ValueError(f"H.264 here takes gray (C=1) or RGB (C=3) clips, got C={c}")
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"H.264 needs even frame sizes, got {h}×{w}: crop or pad to {h + h % 2}×{w + w % 2}")
    if not torch.isfinite(videos).all():
        raise ValueError("videos contain NaN or inf")


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    a = (frame.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def _luma(frame) -> np.ndarray:
    """The Y plane of a decoded frame as (H, W) uint8, untouched: FFmpeg's decoder returns a 4:0:0
    stream as yuv420p with flat chroma, and a conversion to "gray" would rescale the range."""
    plane = frame.planes[0]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, :plane.width]


def h264_roundtrip(videos: torch.Tensor, qp: int, preset: str = "medium", fps: int = 10) -> CodecResult:
    """Encode clips (N, T, C, H, W) with libx264 at constant quantiser ``qp``, decode them, count the bits.

    Gray clips are coded as 8-bit luma only (pixel format ``gray``); RGB clips in full-resolution
    chroma (``yuv444p``), so that chroma subsampling does not cap the codec's quality.
    """
    import av

    _check_clips(videos)
    if not 0 <= int(qp) <= 51:
        raise ValueError(f"qp must be an integer in [0, 51] (0 = lossless), got {qp!r}")
    n, t, c, h, w = videos.shape
    gray = c == 1
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = w, h
    encoder.pix_fmt = "gray" if gray else "yuv444p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.gop_size = t
    encoder.options = {"qp": str(int(qp)), "preset": preset,
                       "x264-params": f"keyint={t}:min-keyint={t}:scenecut=0:open-gop=0"}
    packets = []
    for i, clip in enumerate(videos):
        for j, frame in enumerate(clip):
            vf = av.VideoFrame.from_ndarray(_to_uint8(frame), format="gray" if gray else "rgb24")
            if not gray:
                vf = vf.reformat(format="yuv444p")
            vf.pts = i * t + j
            packets.extend(encoder.encode(vf))
    packets.extend(encoder.encode(None))  # flush the frames x264 still holds
    bits = 8 * sum(p.size for p in packets)
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    if len(frames) != n * t:
        raise RuntimeError(f"H.264 round trip returned {len(frames)} frames for {n * t}")
    arrays = np.stack([_luma(f) if gray else f.to_ndarray(format="rgb24") for f in frames])  # (N·T, H, W[, 3])
    x_hat = torch.from_numpy(arrays).float().div(255).reshape(n, t, h, w, c).permute(0, 1, 4, 2, 3)
    return CodecResult(x_hat.contiguous(), bits)


def bits_per_pixel(bits: float, frames: int, height: int, width: int) -> float:
    """Bits of one clip spread over its frames·height·width pixels."""
    return bits / (frames * height * width)


def video_psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over all frames of all clips of the frame PSNR (dB, range 1). x, x_hat (N, T, C, H, W)."""
    if x.shape != x_hat.shape or x.dim() != 5:
        raise ValueError(f"x and x_hat must be videos (N, T, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(x_hat.shape)}")
    mse = (x.float() - x_hat.float().clamp(0, 1)).pow(2).flatten(2).mean(2).clamp_min(1e-12)  # (N, T)
    return float((10 * torch.log10(1 / mse)).mean())


def rate_distortion(videos: torch.Tensor, qps: Sequence[int], preset: str = "medium") -> list[dict[str, float]]:
    """H.264's operating points on ``videos``: [{"qp", "bpp", "psnr"}] for each qp."""
    n, t, _, h, w = videos.shape
    points = []
    for qp in qps:
        result = h264_roundtrip(videos, qp, preset)
        points.append({"qp": int(qp), "bpp": bits_per_pixel(result.bits / n, t, h, w),
                       "psnr": video_psnr(videos, result.x_hat)})
    return points


def bpp_at_psnr(points: Sequence[dict[str, float]], target: float) -> float:
    """The bpp the codec needs for PSNR ``target``: linear interpolation of log(bpp) against PSNR.

    Raises a ValueError if ``target`` lies outside the PSNR range of ``points`` (extend the qp range).
    """
    pts = sorted(points, key=lambda p: p["psnr"])
    psnrs = [p["psnr"] for p in pts]
    if not psnrs[0] <= target <= psnrs[-1]:
        raise ValueError(f"PSNR {target:.2f} dB lies outside the measured range "
                         f"[{psnrs[0]:.2f}, {psnrs[-1]:.2f}] dB: widen the range of qp")
    log_bpp = np.interp(target, psnrs, [math.log(p["bpp"]) for p in pts])
    return float(math.exp(log_bpp))


def match_psnr(videos: torch.Tensor, target: float, preset: str = "medium") -> dict[str, float]:
    """The coarsest qp at which H.264 reaches PSNR ``target`` on ``videos``, found by bisection.

    Returns {"qp", "bpp", "psnr"} of that operating point (psnr >= target, the nearest the integer qp
    allows); qp 51 if even the coarsest quantiser is better than ``target``. PSNR falls as qp grows.
    """
    n, t, _, h, w = videos.shape

    def point(qp: int) -> dict[str, float]:
        result = h264_roundtrip(videos, qp, preset)
        return {"qp": qp, "bpp": bits_per_pixel(result.bits / n, t, h, w), "psnr": video_psnr(videos, result.x_hat)}

    best = point(51)
    if best["psnr"] >= target:
        return best
    low, high = 0, 51  # psnr(low) >= target > psnr(high)
    while high - low > 1:
        mid = (low + high) // 2
        if point(mid)["psnr"] >= target:
            low = mid
        else:
            high = mid
    return point(low)


def header_bits(channels: int, height: int, width: int) -> int:
    """Bits of the smallest H.264 stream of this frame size: one black frame at qp 51.

    Nearly all of it is fixed cost (x264's text header, the parameter sets), paid once per stream.
    """
    return h264_roundtrip(torch.zeros(1, 1, channels, height, width), 51).bits


def uniform_code_bits(latent_shape: Sequence[int], codebook_size: int) -> float:
    """Bits of one code grid when every code costs log2 K: t·h·w·log2 K."""
    return math.prod(latent_shape) * math.log2(codebook_size)


def entropy_code_bits(train_indices: torch.Tensor, test_indices: torch.Tensor, codebook_size: int) -> float:
    """Mean bits per clip of ``test_indices`` (N, ...) under the code frequencies of ``train_indices``.

    -Σ log2 p(k) over the codes of a clip, p = (count_k + 1) / (total + K) on the training codes:
    what a static arithmetic coder with that frequency table spends (within a few bits per clip).
    It ignores which codes appear *together*; chapter 9's prior captures that and costs less.
    """
    for name, idx in (("train_indices", train_indices), ("test_indices", test_indices)):
        if idx.dtype != torch.long or idx.dim() < 2 or idx.numel() == 0:
            raise ValueError(f"{name} must be non-empty long code grids (N, ...), got {idx.dtype} {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= codebook_size:
            raise ValueError(f"{name} must lie in [0, {codebook_size}), got [{int(idx.min())}, {int(idx.max())}]")
    counts = torch.bincount(train_indices.flatten(), minlength=codebook_size).double() + 1  # (K,) add-one
    log_p = (counts / counts.sum()).log2()  # (K,)
    return float(-log_p[test_indices.flatten()].sum() / len(test_indices))

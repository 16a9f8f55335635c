"""Fixed operations on the pixels of images and videos: resizing by an integer factor, and the
known distortions with which a judge is calibrated.

- ``shrink(x, factor)``: the mean of every factor×factor block of pixels (area downsampling: what
  a camera with factor× fewer pixels of factor× the size would record).
- ``enlarge(x, factor)``: bicubic interpolation (Keys 1981, a = -0.75 as in PyTorch), clipped to
  [0, 1]: the baseline of every learned super-resolution.
- ``gaussian_blur(x, sigma)``: a separable Gaussian filter of standard deviation ``sigma`` pixels
  (the kernel is cut at 3 sigma, borders are padded by reflection).
- ``add_noise(x, sigma, seed)``: i.i.d. Gaussian noise of standard deviation ``sigma``, seeded,
  clipped to [0, 1].
- ``jpeg(x, quality)``: a round trip through JPEG at ``quality`` (1 to 95, Pillow's encoder with its
  default 4:2:0 chroma subsampling): blocking, ringing and lost colour detail, more at lower quality.

A judge that scores generated images or clips (a Fréchet distance in its features) must rank
these distortions of real data in the obvious order before its verdicts mean anything: more blur
or more noise or a lower JPEG quality, a larger distance.

Every function takes images (B, C, H, W) or videos (B, T, C, H, W) and treats leading dimensions
as a batch. Dimension key: B batch, T frames, C channels, H W height and width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vqlib.core.device import to_device


def _frames(x: torch.Tensor, name: str) -> torch.Tensor:
    """x (..., C, H, W) float -> (N, C, H, W), with a clear error for anything else."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{name} needs float images (B, C, H, W) or videos (B, T, C, H, W), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (4, 5) or x.numel() == 0:
        raise ValueError(f"{name} needs a non-empty batch of images (B, C, H, W) or videos (B, T, C, H, W), "
                         f"got shape {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:])


def _check_factor(factor: int, name: str) -> None:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"{name} needs an integer factor >= 1, got {factor!r}")


def shrink(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of every factor×factor block: (..., C, H, W) -> (..., C, H/factor, W/factor)."""
    frames = _frames(x, "shrink")
    _check_factor(factor, "shrink")
    h, w = frames.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"shrink by {factor} needs H and W that are multiples of {factor}, got {h}×{w}")
    out = F.avg_pool2d(frames, factor)  # (N, C, H/f, W/f)
    return out.view(*x.shape[:-2], h // factor, w // factor)


def enlarge(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling, clipped to [0, 1]: (..., C, H, W) -> (..., C, factor·H, factor·W)."""
    frames = _frames(x, "enlarge")
    _check_factor(factor, "enlarge")
    out = F.interpolate(frames, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)
    return out.view(*x.shape[:-2], *out.shape[-2:])  # (N, C, f·H, f·W) back to x's leading shape


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian filter of ``sigma`` pixels on every channel of every frame: (..., C, H, W) -> same."""
    frames = _frames(x, "gaussian_blur")
    if not sigma > 0:
        raise ValueError(f"gaussian_blur needs sigma > 0 (pixels), got {sigma}")
    radius = math.ceil(3 * sigma)
    if radius >= min(frames.shape[-2:]):
        raise ValueError(f"sigma={sigma} is too large for {tuple(frames.shape[-2:])} frames: the kernel "
                         f"radius {radius} must be smaller than the frame")
    offsets = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (2r + 1,)
    n, c, h, w = frames.shape
    flat = frames.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))  # along W
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))  # along H
    return flat.view(x.shape)


def add_noise(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """x + sigma · N(0, 1) from a generator seeded with ``seed``, clipped to [0, 1]: same shape."""
    _frames(x, "add_noise")
    if not sigma >= 0:
        raise ValueError(f"add_noise needs sigma >= 0, got {sigma}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g)  # drawn on the CPU: the same numbers on every device
    return (x + sigma * to_device(noise, x.device).to(x.dtype)).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Every frame encoded as a JPEG at ``quality`` and decoded again: (..., 3, H, W) in [0, 1] -> same.

    The pixels are rounded to 8 bits first (JPEG stores 8-bit colour), so even quality 95 is not exact.
    """
    import io

    import numpy as np
    from PIL import Image

    frames = _frames(x, "jpeg")
    if frames.shape[1] != 3:
        raise ValueError(f"jpeg needs RGB frames (3 channels), got {frames.shape[1]}")
    if not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"jpeg quality must be an integer from 1 to 95, got {quality!r}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for frame in pixels:  # (H, W, 3) uint8
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out.append(np.asarray(decoded.convert("RGB")))
    decoded = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.dtype).div(255)  # (N, 3, H, W)
    return to_device(decoded, x.device).view(x.shape)

"""Convolutional building blocks shared by the book's encoders and decoders.

- ``ResBlock``: the residual block of the VQ-VAE paper (van den Oord et al. 2017, section 4.1):
  ReLU, 3×3 convolution, ReLU, 1×1 convolution, added to the input.
- ``res_stack``: several residual blocks and a final ReLU (as in the authors' Sonnet example).
- ``check_images``: the one input check of every image tokenizer (rank, channels, size, dtype);
  ``check_dtype``: inputs must match the dtype of the model's weights (float64 meets float32 nowhere).
- ``downsample`` / ``upsample``: a 4×4 convolution of stride 2 that halves H and W exactly (for
  even sizes), and the transposed convolution that doubles them.

Left out: normalisation layers and attention (the VQGAN blocks of chapter 5 add them).

Dimension key: B batch, C channels, H W height and width.
"""

from __future__ import annotations

import torch
from torch import nn

from vqlib.core.device import SENTINEL, sentinel_on


def check_dtype(x: torch.Tensor, dtype: torch.dtype | None, name: str = "x") -> None:
    """Raise a TypeError unless x can meet weights of ``dtype``: the same dtype, or any float but float64
    under autocast (which casts both). ``dtype`` None: no check."""
    if dtype is None or x.dtype == dtype or (x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type)):
        return
    if sentinel_on():  # the dtype stands in for the device (vqlib.core.device)
        raise TypeError(f"{SENTINEL}: {name} never went through vqlib.core.device.to_device ({x.dtype}) but the "
                        f"model did ({dtype}): on a GPU {name} would be on the CPU and the model on the GPU; "
                        f"move {name} with to_device({name}, model_device(model))")
    raise TypeError(f"{name} is {x.dtype} but the model's weights are {dtype}: convert the input with "
                    f"{name}.to({dtype})" + (f" (i.e. {name}.float())" if dtype == torch.float32 else ""))


def check_images(x: torch.Tensor, channels: int, factor: int, why: str = "the downsampling factor",
                 dtype: torch.dtype | None = None) -> None:
    """Raise a clear error unless x is a float (B, channels, H, W) batch with H, W positive multiples of factor
    (and, given ``dtype``, of the dtype of the model's weights)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    check_dtype(x, dtype)
    if x.dim() != 4 or x.shape[1] != channels:
        hint = " (a grey image? repeat it to 3 channels with x.expand(-1, 3, -1, -1))" if x.dim() == 4 and \
            x.shape[1] == 1 and channels == 3 else ""
        raise ValueError(f"x must have shape (B, {channels}, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    h, w = x.shape[-2:]
    if h % factor or w % factor or h == 0 or w == 0:
        raise ValueError(f"H and W must be positive multiples of {why} f={factor}, got {h}×{w}: "
                         f"pad or crop to {max(factor, -(-h // factor) * factor)}×{max(factor, -(-w // factor) * factor)}")


class ResBlock(nn.Module):
    """x + conv1×1(relu(conv3×3(relu(x)))). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def res_stack(channels: int, hidden: int, blocks: int) -> nn.Sequential:
    """``blocks`` residual blocks then a ReLU. (B, C, H, W) -> (B, C, H, W)."""
    return nn.Sequential(*(ResBlock(channels, hidden) for _ in range(blocks)), nn.ReLU())


def downsample(in_channels: int, out_channels: int) -> nn.Conv2d:
    """4×4 convolution, stride 2, padding 1: (B, C_in, H, W) -> (B, C_out, H/2, W/2) for even H, W."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


def upsample(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """4×4 transposed convolution, stride 2, padding 1: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)

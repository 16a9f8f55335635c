"""Convolutional building blocks shared by the book's encoders and decoders.

- ``ResBlock``: the residual block of the VQ-VAE paper (van den Oord et al. 2017, section 4.1):
  ReLU, 3×3 convolution, ReLU, 1×1 convolution, added to the input.
- ``res_stack``: several residual blocks and a final ReLU (as in the authors' Sonnet example).
- ``downsample`` / ``upsample``: a 4×4 convolution of stride 2 that halves H and W exactly (for
  even sizes), and the transposed convolution that doubles them.

Left out: normalisation layers and attention (the VQGAN blocks of chapter 5 add them).

Dimension key: B batch, C channels, H W height and width.
"""

from __future__ import annotations

import torch
from torch import nn


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

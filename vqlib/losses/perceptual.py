"""A perceptual distance: compare images in the features of a trained network, the LPIPS way.

Paper: Zhang, Isola, Efros, Shechtman and Wang, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric" (CVPR 2018), eq. 1. For feature maps φ_l of layers l = 1..L, each
normalised to unit length along the channels (n below), and per-channel weights w_l,

    d(x, x̂) = Σ_l  1/(H_l W_l) Σ_{h,w} Σ_c  w_{l,c} (n(φ_l(x))_{chw} - n(φ_l(x̂))_{chw})²

(the paper writes ‖w_l ⊙ (...)‖²; its code, followed here, applies w_l to the squared difference)

LPIPS takes φ from an ImageNet-trained VGG-16 and fits w_l to human judgements of which of two
distortions looks closer ("lin" calibration). VQGAN uses it as a reconstruction loss next to the
pixel loss (Esser et al. 2021).

What is in it:

- ``PerceptualLoss(net, weights=None)``: the formula above for any frozen network with a
  ``taps(x) -> [φ_1, ..., φ_L]`` method. With ``weights=None``, w_l = 1: the paper's uncalibrated
  "baseline" variant. Chapter 5 uses it with ``vqlib.judges.photonet.PhotoNet``, trained on the book's
  photographs, because pretrained weights cannot be downloaded here.
- ``VGG16Features`` and ``lpips_vgg(vgg_path, lin_path)``: the real LPIPS-VGG for a reader who has
  the weights on disk, torchvision's ``vgg16-397923af.pth`` (in ``~/.cache/torch/hub/checkpoints``
  after any torchvision download) and the ``lpips`` package's ``weights/v0.1/vgg.pth``. Nothing is
  ever downloaded.

Left out: LPIPS's AlexNet and SqueezeNet variants, its dropout, and spatial (per-pixel) outputs.

Dimension key: B batch, C channels, H W height and width, L tapped layers.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

# VGG-16's convolutional part as torchvision numbers it: widths, "M" for 2×2 max-pooling
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer: inputs in [-1, 1] -> ImageNet statistics
LPIPS_SCALE = (0.458, 0.448, 0.450)


def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length along the channels at every position: (B, C, H, W) -> (B, C, H, W) (LPIPS's eps)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """d(x, x̂) of the module docstring. x, x_hat (B, 3, H, W) in [0, 1] -> (B,) distances.

    The network is frozen: its parameters get no gradient and it stays in eval mode, but the
    gradient flows through it to x_hat. ``weights``: one (C_l,) tensor of non-negative weights per
    tapped layer, or None for w_l = 1.
    """

    def __init__(self, net: nn.Module, weights: Sequence[torch.Tensor] | None = None) -> None:
        super().__init__()
        if not callable(getattr(net, "taps", None)):
            raise TypeError(f"net must have a taps(x) -> list of feature maps method, got {type(net).__name__}")
        self.net = net.eval().requires_grad_(False)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.as_tensor(w, dtype=torch.float32).flatten(), requires_grad=False)
             for w in (weights or [])])
        if any((w < 0).any() for w in self.weights):
            raise ValueError("LPIPS weights must be non-negative")

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()  # a frozen judge: no dropout, no BatchNorm statistics, whatever the caller's mode
        return self

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not torch.is_tensor(x_hat) or x.shape != x_hat.shape:
            raise ValueError(f"x and x_hat must be tensors of the same shape (B, 3, H, W), got "
                             f"{getattr(x, 'shape', type(x).__name__)} and {getattr(x_hat, 'shape', type(x_hat).__name__)}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0:
            raise ValueError(f"x and x_hat must have shape (B, 3, H, W) with B >= 1, got {tuple(x.shape)}")
        taps_x, taps_x_hat = self.net.taps(x), self.net.taps(x_hat)  # L feature maps each
        if self.weights and len(self.weights) != len(taps_x):
            raise ValueError(f"got {len(self.weights)} layer weights for {len(taps_x)} tapped layers")
        distance = x.new_zeros(len(x))  # (B,)
        for l, (a, b) in enumerate(zip(taps_x, taps_x_hat)):
            diff = (normalize_channels(a) - normalize_channels(b)).pow(2)  # (B, C_l, H_l, W_l)
            if self.weights:
                diff = diff * self.weights[l].view(1, -1, 1, 1)
            distance = distance + diff.sum(dim=1).mean(dim=(1, 2))  # channels summed, positions averaged
        return distance


# ----------------------------------------------------------------------------- LPIPS-VGG from files on disk

class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (same parameter names), with LPIPS's input scaling and taps.

    ``taps(x)``: x (B, 3, H, W) in [0, 1] -> the five ReLU outputs LPIPS compares.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU()]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * x - 1) - self.shift) / self.scale  # [0, 1] -> [-1, 1] -> LPIPS's ScalingLayer
        out = []
        for i, layer in enumerate(self.features[:VGG16_TAPS[-1] + 1]):
            h = layer(h)
            if i in VGG16_TAPS:
                out.append(h)
        return out


def _load_state(path: str | Path, what: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; vqlib never downloads weights: put the file there first")
    try:  # weights_only: a file that asks to run code when unpickled is refused, and none of it runs
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not a plain state dict ({what}): it holds Python objects other than tensors, "
                         f"which vqlib does not load because loading them could run code ({str(err).splitlines()[-1]})"
                         ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} should hold a state dict ({what}), got {type(state).__name__}")
    return state


def lpips_vgg(vgg_path: str | Path, lin_path: str | Path) -> PerceptualLoss:
    """LPIPS-VGG (Zhang et al. 2018) from two files on disk; see the module docstring for where they are.

    ``vgg_path``: torchvision's VGG-16 state dict (keys ``features.N.weight``; the classifier's keys are
    ignored). ``lin_path``: the ``lpips`` package's linear layers (keys ``linL.model.1.weight``, (1, C_l, 1, 1)).
    """
    vgg = VGG16Features()
    state = _load_state(vgg_path, "VGG-16 weights")
    wanted = {k for k in vgg.state_dict() if k.startswith("features.")}
    missing = wanted - set(state)
    if missing:
        raise ValueError(f"{vgg_path} is not torchvision's VGG-16: missing {sorted(missing)[:3]}...")
    vgg.load_state_dict({k: state[k] for k in wanted} | {"shift": vgg.shift, "scale": vgg.scale})
    lin = _load_state(lin_path, "LPIPS linear weights")
    keys = [f"lin{l}.model.1.weight" for l in range(len(VGG16_TAPS))]
    if any(k not in lin for k in keys):
        raise ValueError(f"{lin_path} is not an LPIPS weight file: expected keys {keys}, got {sorted(lin)[:6]}")
    return PerceptualLoss(vgg, [lin[k].flatten() for k in keys])
